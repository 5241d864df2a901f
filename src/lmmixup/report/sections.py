"""The report's sections: each reads what it needs from the run and returns the plain values
its template lays out (texts clipped, numbers formatted, plots as inline SVG), or a `note`
saying why there is nothing to show. Escaping is left to the templates."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable

from markupsafe import Markup

from lmmixup.report.data import (
    RunView,
    clip,
    cluster_records,
    not_available,
    number,
    read_results,
    reject_reasons,
    score_histogram,
)
from lmmixup.report.distiller import distiller_eval_section
from lmmixup.report.overview import files_section, models_section, training_rows_section
from lmmixup.report.samples import samples_section
from lmmixup.report.svg import bar_chart, empty_note, fmt, hbar_chart, histogram, line_chart
from lmmixup.training.steps import STEPS_FILE

MAX_REASONS = 12  # reject reasons charted per stage
MAX_STEP_FILES = 8
_REWARD_KEY = re.compile(r"^rewards/(.+?)(?:_reward)?/mean$")


class Bold(str):
    """A table cell shown in bold."""


def _flat(value: object) -> str:
    """A count or a one-level mapping of counts as short text: `distilled 9, original 21`."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {_flat(v)}" for key, v in value.items())
    return fmt(value) if number(value) is not None else str(value)


def _count(counts: dict, key: str) -> str:
    """A whole-number count from a manifest as text; `?` when missing or not a count."""
    value = counts.get(key)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def stages_section(run: RunView) -> dict:
    """One row per stage: status, counts, time spent over all its runs."""
    if not run.stages:
        return {"note": not_available("no stage has started in this run directory")}
    rows, total = [], 0.0
    for name, manifest in run.stages.items():
        counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
        seconds = number(manifest.get("total_seconds"))
        total += seconds or 0.0
        status = str(manifest.get("status", "?"))
        if status == "running":
            status = "interrupted (or still running)"
        elif manifest.get("partial_reason"):
            status += f": {manifest['partial_reason']}"
        headline = ", ".join(
            f"{key} {_flat(value)}"
            for key, value in counts.items()
            if number(value) is not None or (isinstance(value, str) and len(value) <= 30)
        )
        dumped = json.dumps(counts, indent=2, ensure_ascii=False, default=str)
        rows.append(
            {
                "name": name,
                "status": clip(status, 200),
                "headline": clip(headline, 400),
                "counts": clip(dumped, 4000) if counts else None,
                "seconds": "" if seconds is None else f"{seconds:,.1f}",
                "runs": str(len(manifest.get("history", []) or [])),
            }
        )
    return {"rows": rows, "total": f"{total:,.1f}"}


def _score_plot(run: RunView, stage: str, title: str) -> tuple[Markup, str]:
    """A stage's score histogram and a one-line summary of it."""
    found = score_histogram(run, stage)
    if found is None:
        return empty_note(not_available(f"{stage}/rated.jsonl ({title})")), ""
    hist, failed = found
    rated = sum(hist)
    mean = sum(s * n for s, n in enumerate(hist)) / rated if rated else 0.0
    note = f"{title}: {rated:,} rated, {failed:,} failed, mean score {mean:.2f}."
    chart = bar_chart(
        [str(s) for s in range(6)], hist, title=title, x_label="compressed score (0-5)"
    )
    return chart, note


def scores_section(run: RunView) -> dict:
    """Score histograms of the rated pool and of the re-rated distilled pairs."""
    pool_chart, pool_note = _score_plot(run, "rate", "Pool (rate)")
    mix_chart, mix_note = _score_plot(run, "rerate", "Distilled pairs (rerate)")
    notes = [pool_note, mix_note]
    split = run.counts("split")
    if split:
        notes.append(
            f"Split ({split.get('rule', '?')}): {_count(split, 'high')} high, "
            f"{_count(split, 'low')} low, {_count(split, 'unrated')} unrated."
        )
    kept = run.counts("rerate").get("filter")
    if isinstance(kept, dict):
        notes.append(
            f"Distilled pairs kept (score ≥ {kept.get('threshold', '?')}): {_count(kept, 'kept')}; "
            f"below: {_count(kept, 'below_threshold')}; unrated: {_count(kept, 'unrated')}."
        )
    return {"plots": [pool_chart, mix_chart], "notes": [n for n in notes if n]}


def clusters_section(run: RunView) -> dict:
    """Cluster sizes and cohesion (mean cosine of the members to their centre)."""
    clusters = cluster_records(run)
    if not clusters:
        return {"note": not_available("cluster/clusters.jsonl")}
    sizes = Counter(len(c["member_ids"]) for c in clusters)
    labels = list(range(min(sizes), max(sizes) + 1))
    if len(labels) > 60:
        size_chart = histogram(list(sizes.elements()), title="Cluster sizes", x_label="members")
    else:
        size_chart = bar_chart(
            [str(s) for s in labels],
            [sizes.get(s, 0) for s in labels],
            title="Cluster sizes",
            x_label="members",
            y_label="clusters",
        )
    cohesion = [v for c in clusters if (v := number(c.get("cohesion"))) is not None]
    members = sum(size * n for size, n in sizes.items())
    per_source = Counter(str(c.get("source", "?")) for c in clusters)
    summary = (
        f"{len(clusters):,} clusters of {members:,} records; mean size "
        f"{members / len(clusters):.2f}; mean cohesion "
        + (f"{sum(cohesion) / len(cohesion):.3f}" if cohesion else "n/a")
        + "; per source: "
        + ", ".join(f"{source} {n:,}" for source, n in per_source.most_common())
    )
    cohesion_chart = histogram(cohesion, title="Cluster cohesion", x_label="mean cosine to centre")
    return {"plots": [size_chart, cohesion_chart], "summary": summary}


def rejects_section(run: RunView) -> dict:
    """Per stage: how many records were rejected and why (the most common reasons charted)."""
    charts, rows = [], []
    for stage in run.stages:
        reasons = reject_reasons(run, stage)
        if reasons is None:
            continue
        total = sum(reasons.values())
        rows.append([stage, f"{total:,}", str(len(reasons))])
        if not total:
            continue
        top = reasons.most_common(MAX_REASONS)
        other = total - sum(n for _, n in top)
        if other:
            top.append((f"other ({len(reasons) - MAX_REASONS} reasons)", other))
        chart = hbar_chart(
            [r for r, _ in top], [n for _, n in top], title=f"{stage}: rejects by reason"
        )
        every = [[r, f"{n:,}"] for r, n in reasons.most_common()]  # reasons are never cut
        charts.append({"chart": chart, "every": every})
    if not rows:
        return {"note": not_available("no stage has a rejects file or a tally of reject reasons")}
    return {"rows": rows, "charts": charts}


def selection_section(run: RunView) -> dict:
    """The training set's composition by source and by origin (distilled or original)."""
    path = run.file("select", "train.jsonl")
    counts = run.counts("select")
    if path is not None:
        rows = list(run.rows(path))
        by_origin = Counter(str(r.get("origin", "?")) for r in rows)
        by_source = Counter(str(r.get("source", "?")) for r in rows)
        cross = Counter((str(r.get("source", "?")), str(r.get("origin", "?"))) for r in rows)
    elif isinstance(counts.get("by_origin"), dict):
        by_origin, by_source, cross = (
            Counter(counts["by_origin"]),
            Counter(counts.get("by_source") or {}),
            None,
        )
    else:
        return {"note": not_available("select/train.jsonl")}
    plots = [
        hbar_chart(list(by_origin), list(by_origin.values()), title="Rows by origin"),
        hbar_chart(
            [s for s, _ in by_source.most_common(20)],
            [n for _, n in by_source.most_common(20)],
            title="Rows by source",
        ),
    ]
    table = None
    if cross:
        origins = sorted(by_origin)
        table = {
            "header": ["source", *origins, "rows"],
            "rows": [
                [clip(source, 80)]
                + [f"{cross.get((source, o), 0):,}" for o in origins]
                + [f"{n:,}"]
                for source, n in by_source.most_common()
            ],
        }
    facts = [
        f"{key}: {_flat(counts[key])}"
        for key in ("method", "budget", "mixup_ratio", "requested", "available", "selected")
        if key in counts
    ]
    notes = [str(n) for n in counts.get("notes", []) or []]
    return {"plots": plots, "table": table, "notes": [clip(line, 300) for line in facts + notes]}


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of every step-log line that has a number under `key`."""
    return [
        (step, value)
        for row in rows
        if (step := number(row.get("step"))) is not None
        and (value := number(row.get(key))) is not None
    ]


def _curves(rows: list[dict]) -> list[Markup]:
    """A loss chart and a reward chart (total and each component) when the lines have them."""
    loss = {key: _series(rows, key) for key in ("loss", "eval_loss")}
    rewards = {"reward (total)": _series(rows, "reward")}
    keys = sorted({key for row in rows for key in row if _REWARD_KEY.match(key)})
    rewards |= {_REWARD_KEY.match(key).group(1): _series(rows, key) for key in keys}
    charts = []
    if any(loss.values()):
        charts.append(line_chart(loss, title="Loss", y_label="loss"))
    if any(rewards.values()):
        charts.append(line_chart(rewards, title="Rewards (mean per step)", y_label="reward"))
    return charts


def training_section(run: RunView) -> dict:
    """Loss and reward curves from every steps.jsonl the training code wrote under the run."""
    files = sorted(run.path.rglob(STEPS_FILE))
    if not files:
        return {"note": not_available(f"no {STEPS_FILE} under the run directory")}
    logs = [
        {"label": run.relative(path), "plots": _curves(list(run.rows(path)))}
        for path in files[:MAX_STEP_FILES]
    ]
    more = len(files) - MAX_STEP_FILES
    return {
        "logs": logs,
        "empty": not_available("no loss or reward lines"),
        "more": f"… and {more} more {STEPS_FILE} files." if more > 0 else "",
    }


def _cell(value: object, best: float | None) -> str:
    """A result as text, bold when it is the best of its column; `–` when missing."""
    value = number(value)
    if value is None:
        return "–"
    text = f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return Bold(text) if best is not None and value == best else text


def experiment_section(run: RunView) -> dict:
    """The comparison table (arms x tasks + average) from experiment/results.json."""
    data = read_results(run)
    if isinstance(data, str):
        return {"note": data}
    rows = [r for r in data["rows"] if isinstance(r, dict)]
    tasks = [str(t) for t in data.get("tasks") or [] if isinstance(t, str | int | float)]
    grid = [
        [(row["values"] if isinstance(row.get("values"), dict) else {}).get(t) for t in tasks]
        + [row.get("average")]
        for row in rows
    ]
    best = [
        max((n for value in column if (n := number(value)) is not None), default=None)
        for column in zip(*grid, strict=True)
    ]
    table_rows = [
        [clip(row.get("arm", "?"), 80)]
        + [_cell(value, top) for value, top in zip(cells, best, strict=True)]
        + [fmt(n) if (n := number(row.get("train_rows"))) is not None else "–"]
        for row, cells in zip(rows, grid, strict=True)
    ]
    averages = [
        (str(r.get("arm", "?")), n) for r in rows if (n := number(r.get("average"))) is not None
    ]
    plots = [hbar_chart([a for a, _ in averages], [n for _, n in averages], title="Average by arm")]
    return {
        "header": ["arm", *tasks, "average", "train rows"],
        "rows": table_rows,
        "skipped": len(data["rows"]) - len(rows),
        "plots": plots if averages else [],
    }


SECTIONS: list[tuple[str, str, Callable[[RunView], dict]]] = [
    ("models", "Models used", models_section),
    ("stages", "Stages: records and time", stages_section),
    ("scores", "Quality scores", scores_section),
    ("clusters", "Clusters", clusters_section),
    ("samples", "Clusters before and after distillation", samples_section),
    ("rejects", "Rejects by reason", rejects_section),
    ("selection", "Selected training set", selection_section),
    ("training_rows", "A sample of training rows", training_rows_section),
    ("training", "Training curves", training_section),
    ("experiment", "Experiment", experiment_section),
    ("distiller", "Distiller evaluation", distiller_eval_section),
    ("files", "Output files", files_section),
]

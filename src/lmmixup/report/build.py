"""`lmmixup report`: one self-contained HTML page about a run directory.

The page needs no network and no files beside it: styles and a tiny script are inline, plots
are inline SVG (`lmmixup.report.svg`), and a Content-Security-Policy forbids loading anything.
Every section reads only the files it needs and says so when they are absent, so a run that
stopped half way (or one with only an experiment) still gets a report. Text from the data is
escaped and clipped; samples are capped, so the page stays small for any pool size.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import iter_jsonl, write_text_atomic
from lmmixup.report.svg import bar_chart, empty_note, fmt, hbar_chart, histogram, line_chart
from lmmixup.training.common import STEPS_FILE
from lmmixup.stages import PIPELINE_ORDER

REPORT_FILE = "report.html"
RESULTS_FILE = Path("experiment") / "results.json"
SAMPLE_CLUSTERS = 12  # clusters shown before/after
SAMPLE_MEMBERS = 6  # members shown per cluster
MAX_CHARS = 600  # characters shown per text
MAX_REASONS = 12  # reject reasons charted per stage
MAX_STEP_FILES = 8
_REWARD_KEY = re.compile(r"^rewards/(.+?)(?:_reward)?/mean$")


def clip(text: object, limit: int = MAX_CHARS) -> str:
    """`text` as a string of at most `limit` characters, saying how much was cut."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit:,} more characters]"


def _e(text: object, limit: int = MAX_CHARS) -> str:
    return escape(clip(text, limit))


@dataclass
class RunView:
    """Read-only access to a run directory: stage manifests in run order, tolerant JSONL reads."""

    path: Path
    stages: dict[str, dict] = field(default_factory=dict)
    bad_lines: dict[str, set[int]] = field(default_factory=dict)

    def file(self, stage: str, name: str) -> Path | None:
        path = self.path / stage / name
        return path if path.is_file() else None

    def counts(self, stage: str) -> dict:
        """The stage's counts when it ended (an interrupted stage's counts are not trusted)."""
        manifest = self.stages.get(stage, {})
        counts = manifest.get("counts")
        return counts if manifest.get("status") != "running" and isinstance(counts, dict) else {}

    def rows(self, path: Path | None) -> Iterator[dict]:
        """The records of a JSONL file; unreadable lines are noted for the page, not fatal."""
        if path is None:
            return
        for line in iter_jsonl(path):
            if line.error is None and isinstance(line.value, dict):
                yield line.value
            else:
                self.bad_lines.setdefault(self.relative(path), set()).add(line.number)

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)


def load_run(run_dir: str | Path) -> RunView:
    """The run directory's stages (folders with a manifest.json, one or two levels down)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise LmmixupError(f"{run_dir}: no such run directory")
    run = RunView(path)
    manifests = sorted(path.glob("*/manifest.json")) + sorted(path.glob("*/*/manifest.json"))
    found = []
    for manifest_path in manifests:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            problem = None if isinstance(manifest, dict) else "not a JSON object"
        except (OSError, ValueError) as exc:
            problem = type(exc).__name__
        if problem:
            manifest = {"status": f"unreadable manifest ({problem})"}
        found.append(
            (str(manifest.get("started_at", "")), run.relative(manifest_path.parent), manifest)
        )
    order = {name: i for i, name in enumerate(PIPELINE_ORDER)}
    found.sort(key=lambda item: (order.get(item[1], len(order)), item[0], item[1]))
    run.stages = {name: manifest for _, name, manifest in found}
    if (
        not run.stages
        and not (path / "config.yaml").is_file()
        and not (path / RESULTS_FILE).is_file()
    ):
        raise LmmixupError(
            f"{run_dir} is not a run directory (no <stage>/manifest.json, config.yaml or "
            f"{RESULTS_FILE})"
        )
    return run


# ---------------------------------------------------------------------------- small pieces


def _missing(what: str) -> str:
    return empty_note(f"Not available: {what}.")


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _json_details(label: str, value: object, limit: int = 4000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return f"<details><summary>{escape(label)}</summary><pre>{_e(text, limit)}</pre></details>"


def _number(value: object) -> float | None:
    """A real number, or None (booleans, strings, NaN and the like are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _flat(value: object) -> str:
    """A count or a one-level mapping of counts as short text: `distilled 9, original 21`."""
    if isinstance(value, dict):
        return ", ".join(f"{key} {_flat(v)}" for key, v in value.items())
    return fmt(value) if _number(value) is not None else str(value)


def _count(counts: dict, key: str) -> str:
    """A whole-number count from a manifest as text; `?` when missing or not a count."""
    value = counts.get(key)
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _spread(items: list, k: int) -> list:
    """`k` items spread evenly over the list, in order."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _plots(*svgs: str) -> str:
    return '<div class="plots">' + "".join(svgs) + "</div>"


# ---------------------------------------------------------------------------- sections


def stages_section(run: RunView) -> str:
    """One row per stage: status, counts, time spent over all its runs."""
    if not run.stages:
        return _missing("no stage has started in this run directory")
    rows, total = [], 0.0
    for name, manifest in run.stages.items():
        counts = manifest.get("counts") if isinstance(manifest.get("counts"), dict) else {}
        seconds = _number(manifest.get("total_seconds"))
        total += seconds or 0.0
        status = str(manifest.get("status", "?"))
        if status == "running":
            status = "interrupted (or still running)"
        elif manifest.get("partial_reason"):
            status += f": {manifest['partial_reason']}"
        headline = ", ".join(
            f"{key} {_flat(value)}"
            for key, value in counts.items()
            if _number(value) is not None or (isinstance(value, str) and len(value) <= 30)
        )
        rows.append(
            [
                escape(name),
                _e(status, 200),
                _e(headline, 400) + (_json_details("all counts", counts) if counts else ""),
                "" if seconds is None else f"{seconds:,.1f}",
                str(len(manifest.get("history", []) or [])),
            ]
        )
    rows.append(["<b>total</b>", "", "", f"<b>{total:,.1f}</b>", ""])
    return _table(["stage", "status", "counts", "seconds", "runs"], rows, cls="stages")


def _score_histogram(run: RunView, stage: str) -> tuple[list[int], int] | None:
    """Records per compressed score 0-5 and failed ratings: the manifest's, else the file's."""
    counts = run.counts(stage)
    if isinstance(counts.get("score_histogram"), dict):
        hist = counts["score_histogram"]
        failed = _number(counts.get("failed")) or 0
        return [int(_number(hist.get(str(s))) or 0) for s in range(6)], int(failed)
    path = run.file(stage, "rated.jsonl")
    if path is None:
        return None
    hist, failed = [0] * 6, 0
    for record in run.rows(path):
        rating = record.get("rating")
        score = rating.get("score") if isinstance(rating, dict) else None
        if isinstance(score, int) and 0 <= score <= 5:
            hist[score] += 1
        else:
            failed += 1
    return hist, failed


def _score_block(run: RunView, stage: str, title: str) -> tuple[str, str]:
    found = _score_histogram(run, stage)
    if found is None:
        return _missing(f"{stage}/rated.jsonl ({title})"), ""
    hist, failed = found
    rated = sum(hist)
    mean = sum(s * n for s, n in enumerate(hist)) / rated if rated else 0.0
    note = f"{title}: {rated:,} rated, {failed:,} failed, mean score {mean:.2f}."
    chart = bar_chart(
        [str(s) for s in range(6)], hist, title=title, x_label="compressed score (0-5)"
    )
    return chart, note


def scores_section(run: RunView) -> str:
    """Score histograms of the rated pool and of the re-rated distilled pairs."""
    pool_chart, pool_note = _score_block(run, "rate", "Pool (rate)")
    mix_chart, mix_note = _score_block(run, "rerate", "Distilled pairs (rerate)")
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
    items = "".join(f"<li>{escape(n)}</li>" for n in notes if n)
    return _plots(pool_chart, mix_chart) + (f"<ul>{items}</ul>" if items else "")


def _clusters(run: RunView) -> list[dict]:
    """Cluster records with an id and a list of member ids (others cannot be shown)."""
    path = run.file("cluster", "clusters.jsonl")
    return [
        c for c in run.rows(path) if c.get("cluster_id") and isinstance(c.get("member_ids"), list)
    ]


def clusters_section(run: RunView) -> str:
    """Cluster sizes and cohesion (mean cosine of the members to their centre)."""
    clusters = _clusters(run)
    if not clusters:
        return _missing("cluster/clusters.jsonl")
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
    cohesion = [v for c in clusters if (v := _number(c.get("cohesion"))) is not None]
    members = sum(size * n for size, n in sizes.items())
    per_source = Counter(str(c.get("source", "?")) for c in clusters)
    note = (
        f"{len(clusters):,} clusters of {members:,} records; mean size "
        f"{members / len(clusters):.2f}; mean cohesion "
        + (f"{sum(cohesion) / len(cohesion):.3f}" if cohesion else "n/a")
        + "; per source: "
        + ", ".join(f"{source} {n:,}" for source, n in per_source.most_common())
    )
    return (
        _plots(
            size_chart,
            histogram(cohesion, title="Cluster cohesion", x_label="mean cosine to centre"),
        )
        + f"<p>{escape(note)}</p>"
    )


def _pick(run: RunView, path: Path | None, wanted: set, key: Callable[[dict], object]) -> dict:
    """The records of a file whose key is in `wanted`, by key (first one wins)."""
    found: dict = {}
    for record in run.rows(path):
        value = key(record)
        if value in wanted and value not in found:
            found[value] = record
    return found


def _pair(prompt: object, completion: object) -> str:
    return (
        f'<div class="prompt"><b>prompt</b><pre>{_e(prompt)}</pre></div>'
        f'<div class="completion"><b>completion</b><pre>{_e(completion)}</pre></div>'
    )


def _members_html(cluster: dict, members: dict) -> str:
    ids = cluster["member_ids"]
    items = []
    for member_id in ids[:SAMPLE_MEMBERS]:
        member = members.get(member_id)
        if member is None:
            items.append(f"<li><code>{_e(member_id, 80)}</code>: not found</li>")
            continue
        rating = member.get("rating")
        score = rating.get("score") if isinstance(rating, dict) else None
        items.append(
            f"<li><code>{_e(member_id, 80)}</code> score {escape(str(score))}"
            f"{_pair(member.get('prompt'), member.get('completion'))}</li>"
        )
    more = (
        f"<p>… and {len(ids) - SAMPLE_MEMBERS} more members</p>"
        if len(ids) > SAMPLE_MEMBERS
        else ""
    )
    return "<ol>" + "".join(items) + "</ol>" + more


def _after_html(output: dict | None, reject: dict | None, fate: str) -> str:
    if output is None and reject is None:
        return "<p>No distilled output yet.</p>"
    record = output if output is not None else reject.get("raw", {})
    record = record if isinstance(record, dict) else {}
    parts = []
    if reject is not None:
        parts.append(f'<p class="rejected">Rejected: {_e(reject.get("reason"), 300)}</p>')
    if record.get("prompt") is not None or record.get("completion") is not None:
        parts.append(_pair(record.get("prompt"), record.get("completion")))
    elif record.get("raw_output"):
        parts.append(f"<b>raw output</b><pre>{_e(record['raw_output'])}</pre>")
    checks = record.get("checks") if isinstance(record.get("checks"), dict) else {}
    rows = [[escape(str(k)), _e(json.dumps(v, ensure_ascii=False), 200)] for k, v in checks.items()]
    rows += [
        [escape(key), _e(record[key], 200)]
        for key in ("finish_reason", "model")
        if record.get(key) is not None
    ]
    if fate:
        rows.append(["outcome", escape(fate)])
    parts.append("<b>checks</b>" + _table(["check", "value"], rows, cls="checks"))
    return "".join(parts)


@dataclass
class _Lineage:
    """What became of a sample of clusters: outputs, rejects, members, re-ratings, selection."""

    outputs: dict  # cluster_id -> distilled record
    rejects: dict  # cluster_id -> distill reject
    members: dict  # member id -> pool record
    ratings: dict  # distilled id -> re-rated record
    kept: set | None  # distilled ids kept after re-rating (None: not re-rated yet)
    selected: set  # distilled ids in the training set

    def fate(self, output: dict) -> str:
        rating = (self.ratings.get(output.get("id")) or {}).get("rating")
        score = rating.get("score") if isinstance(rating, dict) else None
        fate = "distilled" + (f", re-rated score {score}" if score is not None else "")
        if self.kept is not None:
            fate += ", kept" if output.get("id") in self.kept else ", not kept"
        return fate + (", selected" if output.get("id") in self.selected else "")


def _reject_cluster(reject: dict) -> object:
    raw = reject.get("raw")
    return raw.get("cluster_id") if isinstance(raw, dict) else None


def _lineage(run: RunView, chosen: list[dict]) -> _Lineage:
    ids = {c["cluster_id"] for c in chosen}
    outputs = _pick(run, run.file("distill", "distilled.jsonl"), ids, lambda r: r.get("cluster_id"))
    rejects = _pick(run, run.file("distill", "rejects.jsonl"), ids, _reject_cluster)
    wanted = {m for c in chosen for m in c["member_ids"][:SAMPLE_MEMBERS]}
    pool = ("split", "low.jsonl"), ("rate", "rated.jsonl"), ("import", "pool.jsonl")
    source = next((path for stage, name in pool if (path := run.file(stage, name))), None)
    made = {o.get("id") for o in outputs.values()}
    kept_path = run.file("rerate", "kept.jsonl")
    return _Lineage(
        outputs=outputs,
        rejects=rejects,
        members=_pick(run, source, wanted, lambda r: r.get("id")),
        ratings=_pick(run, run.file("rerate", "rated.jsonl"), made, lambda r: r.get("id")),
        kept=set(_pick(run, kept_path, made, lambda r: r.get("id"))) if kept_path else None,
        selected=set(_pick(run, run.file("select", "train.jsonl"), made, lambda r: r.get("id"))),
    )


def _cluster_block(cluster: dict, lineage: _Lineage) -> str:
    output = lineage.outputs.get(cluster["cluster_id"])
    reject = lineage.rejects.get(cluster["cluster_id"]) if output is None else None
    status = "distilled" if output else f"rejected: {reject.get('reason')}" if reject else "pending"
    cohesion = _number(cluster.get("cohesion"))
    summary = (
        f"{cluster['cluster_id']} · {cluster.get('source', '?')} · "
        f"{len(cluster['member_ids'])} members · cohesion "
        + (f"{cohesion:.3f}" if cohesion is not None else "n/a")
        + f" · {status}"
    )
    after = _after_html(output, reject, lineage.fate(output) if output else "")
    return (
        f'<details class="cluster"><summary>{_e(summary, 200)}</summary><div class="sxs">'
        f'<div class="before"><h4>Members (before)</h4>'
        f"{_members_html(cluster, lineage.members)}</div>"
        f'<div class="after"><h4>Distilled (after)</h4>{after}</div></div></details>'
    )


def samples_section(run: RunView) -> str:
    """A sample of clusters: members (before) next to the distilled pair (after) and its checks."""
    clusters = _clusters(run)
    if not clusters:
        return _missing("cluster/clusters.jsonl")
    made = {r.get("cluster_id") for r in run.rows(run.file("distill", "distilled.jsonl"))}
    accepted = [c for c in clusters if c["cluster_id"] in made]
    chosen = _spread(accepted, SAMPLE_CLUSTERS * 2 // 3)
    chosen += _spread(
        [c for c in clusters if c["cluster_id"] not in made], SAMPLE_CLUSTERS - len(chosen)
    )
    lineage = _lineage(run, chosen)
    intro = (
        f"<p>{len(chosen)} of {len(clusters):,} clusters ({len(accepted):,} distilled in all), "
        f"spread over the file, distilled ones first. Texts are clipped to {MAX_CHARS} "
        "characters.</p>"
    )
    return intro + "".join(_cluster_block(cluster, lineage) for cluster in chosen)


def _reasons(run: RunView, stage: str) -> Counter | None:
    """Rejects by reason: the manifest's tally when the stage ended, else the rejects file's."""
    counted = run.counts(stage).get("reject_reasons")
    if isinstance(counted, dict):
        return Counter({str(k): int(v) for k, v in counted.items() if _number(v) is not None})
    path = run.file(stage, "rejects.jsonl")
    if path is None:
        return None
    return Counter(clip(r.get("reason", "no reason given"), 160) for r in run.rows(path))


def rejects_section(run: RunView) -> str:
    """Per stage: how many records were rejected and why (the most common reasons charted)."""
    charts, rows = [], []
    for stage in run.stages:
        reasons = _reasons(run, stage)
        if reasons is None:
            continue
        total = sum(reasons.values())
        rows.append([escape(stage), f"{total:,}", str(len(reasons))])
        if not total:
            continue
        top = reasons.most_common(MAX_REASONS)
        other = total - sum(n for _, n in top)
        if other:
            top.append((f"other ({len(reasons) - MAX_REASONS} reasons)", other))
        every = [[_e(r, 300), f"{n:,}"] for r, n in reasons.most_common()]
        charts.append(
            '<div class="chart">'
            + hbar_chart(
                [r for r, _ in top], [n for _, n in top], title=f"{stage}: rejects by reason"
            )
            + f"<details><summary>every reason</summary>{_table(['reason', 'rejects'], every)}"
            + "</details></div>"
        )
    if not rows:
        return _missing("no stage has a rejects file or a tally of reject reasons")
    return _table(["stage", "rejected", "reasons"], rows) + _plots(*charts)


def selection_section(run: RunView) -> str:
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
        return _missing("select/train.jsonl")
    parts = [
        _plots(
            hbar_chart(list(by_origin), list(by_origin.values()), title="Rows by origin"),
            hbar_chart(
                [s for s, _ in by_source.most_common(20)],
                [n for _, n in by_source.most_common(20)],
                title="Rows by source",
            ),
        )
    ]
    if cross:
        origins = sorted(by_origin)
        table_rows = [
            [_e(source, 80)] + [f"{cross.get((source, o), 0):,}" for o in origins] + [f"{n:,}"]
            for source, n in by_source.most_common()
        ]
        parts.append(_table(["source", *map(escape, origins), "rows"], table_rows))
    facts = [
        f"{key}: {_flat(counts[key])}"
        for key in ("method", "budget", "mixup_ratio", "requested", "available", "selected")
        if key in counts
    ]
    notes = [str(n) for n in counts.get("notes", []) or []]
    items = "".join(f"<li>{_e(line, 300)}</li>" for line in facts + notes)
    return "".join(parts) + (f"<ul>{items}</ul>" if items else "")


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of every step-log line that has a number under `key`."""
    return [
        (step, value)
        for row in rows
        if (step := _number(row.get("step"))) is not None
        and (value := _number(row.get(key))) is not None
    ]


def _curves(rows: list[dict]) -> list[str]:
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


def training_section(run: RunView) -> str:
    """Loss and reward curves from every steps.jsonl the training code wrote under the run."""
    files = sorted(run.path.rglob(STEPS_FILE))
    if not files:
        return _missing(f"no {STEPS_FILE} under the run directory")
    parts = []
    for path in files[:MAX_STEP_FILES]:
        charts = _curves(list(run.rows(path)))
        label = escape(run.relative(path))
        parts.append(
            f"<h3>{label}</h3>"
            + (_plots(*charts) if charts else _missing("no loss or reward lines"))
        )
    if len(files) > MAX_STEP_FILES:
        parts.append(f"<p>… and {len(files) - MAX_STEP_FILES} more {STEPS_FILE} files.</p>")
    return "".join(parts)


def _values(row: dict) -> dict:
    return row["values"] if isinstance(row.get("values"), dict) else {}


def _cell(value: object, best: float | None) -> str:
    number = _number(value)
    if number is None:
        return "–"
    text = f"{number:.3f}" if abs(number) < 10 else f"{number:,.1f}"
    return f"<b>{text}</b>" if best is not None and number == best else text


def experiment_section(run: RunView) -> str:
    """The comparison table (arms x tasks + average) from experiment/results.json."""
    path = run.path / RESULTS_FILE
    if not path.is_file():
        return _missing(str(RESULTS_FILE))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return empty_note(f"{RESULTS_FILE} could not be read: {exc}")
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        return empty_note(f"{RESULTS_FILE} has no 'rows' list")
    rows = [r for r in data["rows"] if isinstance(r, dict)]
    tasks = [str(t) for t in data.get("tasks") or [] if isinstance(t, str | int | float)]
    grid = [[_values(row).get(t) for t in tasks] + [row.get("average")] for row in rows]
    best = [
        max((n for value in column if (n := _number(value)) is not None), default=None)
        for column in zip(*grid, strict=True)
    ]
    table_rows = [
        [_e(row.get("arm", "?"), 80)]
        + [_cell(value, top) for value, top in zip(cells, best, strict=True)]
        + [fmt(n) if (n := _number(row.get("train_rows"))) is not None else "–"]
        for row, cells in zip(rows, grid, strict=True)
    ]
    table = _table(
        ["arm", *map(escape, tasks), "average", "train rows"], table_rows, cls="experiment"
    )
    averages = [
        (str(r.get("arm", "?")), n) for r in rows if (n := _number(r.get("average"))) is not None
    ]
    chart = (
        hbar_chart([a for a, _ in averages], [n for _, n in averages], title="Average by arm")
        if averages
        else ""
    )
    skipped = len(data["rows"]) - len(rows)
    note = f"<p>{skipped} malformed rows left out.</p>" if skipped else ""
    return (
        table + note + "<p>Highest value per column in bold.</p>" + (_plots(chart) if chart else "")
    )


SECTIONS: list[tuple[str, str, Callable[[RunView], str]]] = [
    ("stages", "Stages: records and time", stages_section),
    ("scores", "Quality scores", scores_section),
    ("clusters", "Clusters", clusters_section),
    ("samples", "Clusters before and after distillation", samples_section),
    ("rejects", "Rejects by reason", rejects_section),
    ("selection", "Selected training set", selection_section),
    ("training", "Training curves", training_section),
    ("experiment", "Experiment", experiment_section),
]

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#202124;background:#fff}
h1{font-size:1.6em}h2{border-bottom:2px solid #dadce0;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}th,td{border:1px solid #dadce0;padding:4px 8px;
 text-align:left;vertical-align:top}th{background:#f1f3f4}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f9fa;padding:6px;margin:2px 0;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:16px}svg.plot{border:1px solid #e8eaed;background:#fff;font-size:11px}
svg .title{font-weight:bold;font-size:13px}svg .small{font-size:10px}svg .grid{stroke:#e8eaed}
svg .axis{stroke:#5f6368}.missing{color:#80868b;font-style:italic}.rejected{color:#d93025;font-weight:bold}
details.cluster{border:1px solid #dadce0;border-radius:4px;margin:6px 0;padding:4px 8px}
details.cluster>summary{cursor:pointer;font-weight:600}
.sxs{display:grid;grid-template-columns:1fr 1fr;gap:16px}.sxs ol{padding-left:20px}
nav a{margin-right:12px}.warn{background:#fef7e0;padding:8px;border-left:4px solid #f9ab00}
"""
# Nothing may load from anywhere: inline styles and scripts only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
_SCRIPT = "document.documentElement.dataset.rendered = 'yes';"


def build_report(run_dir: str | Path) -> str:
    """The HTML text of the report for a run directory."""
    run = load_run(run_dir)
    name = escape(run.path.name or str(run.path))
    body = []
    for key, title, render in SECTIONS:
        body.append(f'<section id="{key}"><h2>{escape(title)}</h2>{render(run)}</section>')
    config = run.path / "config.yaml"
    head = [
        f"<h1>lmmixup run report: {name}</h1>",
        f"<p>Run directory <code>{escape(str(run.path.resolve()))}</code>; generated "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}.</p>",
        "<nav>" + "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t, _ in SECTIONS) + "</nav>",
    ]
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        head.append(
            f"<details><summary>config.yaml</summary><pre>{_e(text, 20000)}</pre></details>"
        )
    if run.bad_lines:
        listed = "; ".join(
            f"{name}: {len(lines)} lines" for name, lines in sorted(run.bad_lines.items())
        )
        head.append(f'<p class="warn">Unreadable JSONL lines were left out: {escape(listed)}.</p>')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lmmixup report: {name}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(head)}{''.join(body)}<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    html = build_report(run_dir)
    output = Path(output) if output is not None else Path(run_dir) / REPORT_FILE
    write_text_atomic(output, html)
    return output

"""`lmmixup report`: every section from a synthetic run directory, graceful gaps, and a render
in headless Chromium (no console messages, plots painted)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import write_records
from lmmixup.report import SECTIONS, build_report, write_report
from lmmixup.report.svg import PALETTE, histogram, nice_ticks
from lmmixup.runtime.manifest import read_manifest, write_manifest
from lmmixup.runtime.runner import run_stage
from lmmixup.training.steps import StepLog

LMMIXUP = [sys.executable, "-m", "lmmixup.cli"]
HOSTILE = '<script>console.log("x")</script><img src="https://evil.example/x.png"> & "quotes"'
SOURCES = ("alpha", "beta")


def _pool() -> list[dict]:
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"Question {i}: how do I start with topic {i % 4}?",
            "completion": f"Answer {i}: begin with the basics of topic {i % 4}. " * (1 + i % 3),
            "source": SOURCES[i % 2],
        }
        for i in range(24)
    ]
    rows[2]["prompt"] = HOSTILE  # a low-quality member shown in the sample: must stay text
    rows[7]["completion"] = "x" * 5000  # clipped in the sample
    return rows


def _rating(score: int | None) -> dict | None:
    if score is None:
        return None
    overall = score + 4
    return {
        "overall": overall,
        "score": score,
        "rarity": None,
        "complexity": None,
        "informativeness": None,
        "rater": "fake",
        "method": "judge-logprob",
    }


def _stage(run_dir: Path, name: str, files: dict[str, list[dict]], counts: dict) -> None:
    """One stage written by the real stage runner (so its manifest has the real format)."""

    def body(stage) -> None:
        for file_name, records in files.items():
            write_records(stage.file(file_name), records)
        stage.counts.update(counts)

    run_stage(run_dir, name, inputs=[], config={name: {"synthetic": True}}, body=body)


def _steps(path: Path, lines: list[dict]) -> None:
    """steps.jsonl lines as the trainers' StepLog writes them."""
    log = StepLog(path)
    for line in lines:
        state = SimpleNamespace(global_step=line.pop("step"), epoch=0.5)
        log.on_log(None, state, None, logs=line)


RUN_CONFIG = """\
rate: {judge: {backend: openai, model: judge-7b}, mode: generate, embedder: bundled:minilm}
cluster: {embedder: bundled:minilm}
distill: {generator: {backend: hf, model: runs/distiller/grpo/final}}
select: {budget: 10}
"""
LONG_REASON = "drift: the merged pair " + "wanders away from what its members ask " * 12 + "END"


def make_run(run_dir: Path) -> Path:
    """A complete synthetic run: every stage, training logs and an experiment table."""
    pool = _pool()
    (run_dir).mkdir(parents=True)
    (run_dir / "config.yaml").write_text(RUN_CONFIG)
    import_rejects = [
        {"file": "in.jsonl", "line": 3, "reason": "empty prompt", "raw": {"prompt": ""}},
        {"file": "in.jsonl", "line": 9, "reason": "empty prompt", "raw": {"prompt": " "}},
        {"file": "in.jsonl", "line": 11, "reason": "invalid JSON: bad escape", "raw": "{"},
    ]
    _stage(
        run_dir,
        "import",
        {"pool.jsonl": pool, "rejects.jsonl": import_rejects},
        {
            "kept": 24,
            "rejected": 3,
            "reject_reasons": {"empty prompt": 2, "invalid JSON: bad escape": 1},
        },
    )
    scores = [i % 6 for i in range(23)] + [None]
    rated = [{**r, "rating": _rating(s)} for r, s in zip(pool, scores, strict=True)]
    rated[-1]["rating_error"] = "no JSON in the reply"
    rate_rejects = [{"id": "p99", "file": "pool.jsonl", "line": 99, "reason": "judge timed out"}]
    hist = {str(s): scores.count(s) for s in range(6)}
    _stage(
        run_dir,
        "rate",
        {"rated.jsonl": rated, "rejects.jsonl": rate_rejects},
        {"rated": 23, "failed": 1, "score_histogram": hist},
    )
    high = [r for r in rated if r["rating"] and r["rating"]["score"] >= 4]
    low = [r for r in rated if r["rating"] and r["rating"]["score"] < 4]
    _stage(
        run_dir,
        "split",
        {"high.jsonl": high, "low.jsonl": low},
        {"high": len(high), "low": len(low), "unrated": 1, "rule": "score >= 4"},
    )
    low_ids = [r["id"] for r in low]
    clusters = [
        {
            "cluster_id": f"c{k:06d}",
            "source": SOURCES[k % 2],
            "member_ids": low_ids[k * 3 : k * 3 + 3],
            "size": len(low_ids[k * 3 : k * 3 + 3]),
            "cohesion": 0.5 + 0.07 * k,
            "coherent": k != 4,
        }
        for k in range(5)
    ]
    _stage(run_dir, "cluster", {"clusters.jsonl": clusters}, {"clusters": 5, "records": 15})
    distilled = [
        {
            "id": f"mix-{c['cluster_id']}",
            "prompt": f"Merged question of {c['cluster_id']}",
            "completion": f"Merged answer of {c['cluster_id']}",
            "source": c["source"],
            "task_type": "qa",
            "cluster_id": c["cluster_id"],
            "member_ids": c["member_ids"],
            "think": None,
            "raw_output": "<answer>...</answer>",
            "model": "fake-distiller",
            "finish_reason": "stop",
            "checks": {"flags": [], "member_similarity": 0.61, "copy_overlap": 0.12},
        }
        for c in clusters[:3]
    ]
    distill_rejects = [
        {
            "id": "mix-c000003",
            "file": "cluster/clusters.jsonl",
            "line": 4,
            "reason": LONG_REASON,
            "raw": {
                "cluster_id": "c000003",
                "prompt": "Off-topic question",
                "completion": "Off-topic answer",
                "checks": {"flags": ["drift"], "member_similarity": 0.05, "copy_overlap": 0.1},
            },
        }
    ]
    _stage(
        run_dir,
        "distill",
        {"distilled.jsonl": distilled, "rejects.jsonl": distill_rejects},
        {"distilled": 3, "reject_reasons": {LONG_REASON: 1}},
    )
    rerated = [{**d, "rating": _rating(s)} for d, s in zip(distilled, (5, 4, 1), strict=True)]
    _stage(
        run_dir,
        "rerate",
        {"rated.jsonl": rerated, "kept.jsonl": rerated[:2], "rejects.jsonl": []},
        {
            "rated": 3,
            "failed": 0,
            "score_histogram": {"0": 0, "1": 1, "2": 0, "3": 0, "4": 1, "5": 1},
            "filter": {"kept": 2, "below_threshold": 1, "unrated": 0, "threshold": 4},
        },
    )
    train = [{**d, "origin": "distilled", "score": 5} for d in rerated[:2]]
    train += [{**r, "origin": "original"} for r in high[:4]]
    _stage(
        run_dir,
        "select",
        {"train.jsonl": train, "train.why.jsonl": [{"id": r["id"]} for r in train]},
        {"budget": 6, "rows": 6, "notes": ["distilled: 3 requested, only 2 available"]},
    )
    _steps(
        run_dir / "distiller" / "sft" / "steps.jsonl",
        [{"step": s, "loss": 3.0 / s, "learning_rate": 1e-4} for s in range(1, 9)]
        + [{"step": 8, "train_runtime": 1.0, "train_loss": 1.2}],
    )
    _steps(
        run_dir / "distiller" / "grpo" / "steps.jsonl",
        [
            {
                "step": s,
                "loss": 0.01 * s,
                "reward": 0.1 * s,
                "rewards/quality_reward/mean": 0.05 * s,
                "rewards/alignment_reward/mean": 0.5,
                "rewards/format_reward/mean": 1.0,
            }
            for s in range(1, 6)
        ],
    )
    results = {
        "tasks": ["gsm8k", "heldout_likelihood"],
        "rows": [
            {"arm": "base", "values": {"gsm8k": 0.1, "heldout_likelihood": -2.5}, "average": -1.2},
            {"arm": "random", "values": {"gsm8k": 0.2, "heldout_likelihood": None}},
            {
                "arm": "mixup+original 3:7",
                "values": {"gsm8k": 0.3, "heldout_likelihood": -2.0},
                "average": -0.85,
                "train_rows": 6,
            },
        ],
    }
    (run_dir / "experiment").mkdir()
    (run_dir / "experiment" / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def full_run(tmp_path) -> Path:
    return make_run(tmp_path / "run")


def _section(html: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert match, f"section {key} missing"
    return match.group(1)


def assert_self_contained(html: str) -> None:
    """No attribute that loads anything, and links only within the page or to the run's files
    (relative paths: no scheme, no absolute path, no way above the report's folder)."""
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert not re.search(r"<(?:img|script|link|iframe|object|embed|source)\b[^>]*\bsrc=", html)
    assert not re.search(r"<link\b", html)
    hrefs = re.findall(r"""\bhref\s*=\s*["']?([^"'\s>]*)""", html)
    assert hrefs and all(
        h.startswith("#") or not re.match(r"^(/|[a-z]+:|\.\./)", h) for h in hrefs
    ), hrefs
    assert "url(" not in html and "@import" not in html


def test_every_section_is_filled_from_a_full_run(full_run):
    html = build_report(full_run)
    assert_self_contained(html)
    assert "Not available" not in html
    stages = _section(html, "stages")
    order = [re.search(rf"<td>{name}</td>", stages).start() for name in ("import", "rate", "split")]
    assert order == sorted(order)
    assert "kept 24" in stages and "<td>complete</td>" in stages
    scores = _section(html, "scores")
    assert scores.count('<svg class="plot"') == 2
    assert "23 rated, 1 failed" in scores and "kept (score ≥ 4): 2" in scores
    clusters = _section(html, "clusters")
    assert "Cluster sizes" in clusters and "Cluster cohesion" in clusters
    assert "5 clusters of 15 records" in clusters
    samples = _section(html, "samples")
    assert samples.count('<details class="cluster">') == 5
    assert "Merged answer of c000000" in samples and "Rejected: drift" in samples
    assert "re-rated score 5, kept, selected" in samples
    assert "re-rated score 1, not kept" in samples
    assert "member_similarity" in samples and "0.61" in samples
    assert "more characters]" in samples  # the 5,000-character completion is clipped
    rejects = _section(html, "rejects")
    assert "empty prompt" in rejects and "judge timed out" in rejects and "drift" in rejects
    selection = _section(html, "selection")
    assert "Rows by origin" in selection and "Rows by source" in selection
    assert "distilled: 3 requested, only 2 available" in selection
    training = _section(html, "training")
    assert "distiller/sft/steps.jsonl" in training and "distiller/grpo/steps.jsonl" in training
    for series in ("loss", "reward (total)", "quality", "alignment", "format"):
        assert f"<title>{series}</title>" in training
    experiment = _section(html, "experiment")
    assert "mixup+original 3:7" in experiment and "<b>0.300</b>" in experiment
    assert "<b>-0.850</b>" in experiment and "–" in experiment  # best average; missing value


def test_data_text_is_escaped(full_run):
    html = build_report(full_run)
    assert '<script>console.log("x")' not in html and 'evil.example/x.png">' not in html
    assert "&lt;script&gt;console.log(&#34;x&#34;)&lt;/script&gt;" in html


def test_hostile_text_is_escaped_wherever_it_is_shown(tmp_path):
    """Ids, sources, reasons, checks, notes, arms, tasks and the config all stay text."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"note: '{HOSTILE}'\n")
    pool = [
        {**r, "id": f"{HOSTILE}{r['id']}", "source": HOSTILE, "rating": _rating(1)}
        for r in _pool()[:4]
    ]
    _stage(run_dir, "import", {"pool.jsonl": pool, "rejects.jsonl": [{"reason": HOSTILE}]}, {})
    _stage(run_dir, "split", {"low.jsonl": pool}, {"rule": HOSTILE, HOSTILE: 4})
    cluster = {"cluster_id": HOSTILE, "source": HOSTILE, "member_ids": [r["id"] for r in pool]}
    _stage(run_dir, "cluster", {"clusters.jsonl": [cluster]}, {})
    raw = {"cluster_id": HOSTILE, "raw_output": HOSTILE, "checks": {HOSTILE: HOSTILE}}
    _stage(run_dir, "distill", {"rejects.jsonl": [{"reason": HOSTILE, "raw": raw}]}, {})
    train = [{"id": "d0", "prompt": HOSTILE, "source": HOSTILE, "origin": HOSTILE}]
    _stage(run_dir, "select", {"train.jsonl": train}, {"method": HOSTILE, "notes": [HOSTILE]})
    (run_dir / "experiment").mkdir()
    (run_dir / "experiment" / "results.json").write_text(
        json.dumps({"tasks": [HOSTILE], "rows": [{"arm": HOSTILE, "values": {HOSTILE: 0.5}}]})
    )

    html = build_report(run_dir)
    assert_self_contained(html)
    assert html.count("<script") == 1  # the page's own
    assert "<img" not in html
    for key in ("stages", "scores", "samples", "rejects", "selection", "experiment"):
        assert "&lt;script&gt;console.log(" in _section(html, key), key
    assert html.count("&lt;script&gt;console.log(") >= 20


def test_an_interrupted_run_still_reports(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("rate: {}\n")
    _stage(run_dir, "import", {"pool.jsonl": _pool(), "rejects.jsonl": []}, {"kept": 24})
    rated = [{**r, "rating": _rating(2)} for r in _pool()[:5]]
    _stage(run_dir, "rate", {"rated.jsonl": rated}, {"score_histogram": {"5": 999}})
    manifest = read_manifest(run_dir / "rate" / "manifest.json")
    write_manifest(run_dir / "rate" / "manifest.json", {**manifest, "status": "running"})
    with open(run_dir / "rate" / "rated.jsonl", "a") as handle:
        handle.write('{"id": "torn", "prom')  # killed mid-write

    html = build_report(run_dir)
    for key, _, _ in SECTIONS:
        assert f'<section id="{key}">' in html
    assert "interrupted" in _section(html, "stages")
    scores = _section(html, "scores")
    assert "Pool (rate): 5 rated, 0 failed" in scores  # from the file: the counts are stale
    assert "Not available: rerate/rated.jsonl" in scores
    for key in ("clusters", "samples", "selection", "training", "experiment"):
        assert "Not available" in _section(html, key), key
    assert "rate/rated.jsonl: 1 lines" in html
    assert_self_contained(html)


def test_a_broken_experiment_table_is_reported_not_fatal(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "experiment").mkdir(parents=True)
    results = run_dir / "experiment" / "results.json"
    results.write_text(
        json.dumps({"tasks": ["t"], "rows": [{"arm": "a", "values": None}, "junk", {"arm": "b"}]})
    )
    experiment = _section(build_report(run_dir), "experiment")
    assert "1 malformed rows left out" in experiment and experiment.count("<tr>") == 3
    results.write_text("{not json")
    assert "could not be read" in _section(build_report(run_dir), "experiment")


def test_odd_manifests_are_shown_not_dropped(tmp_path):
    run_dir = tmp_path / "run"
    _stage(run_dir, "split", {}, {"high": "many", "rule": "score >= 4"})
    (run_dir / "cluster").mkdir()
    (run_dir / "cluster" / "manifest.json").write_text("[1, 2]")
    html = build_report(run_dir)
    assert "unreadable manifest (not a JSON object)" in _section(html, "stages")
    assert "Split (score &gt;= 4): ? high, ? low, ? unrated." in _section(html, "scores")


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(LmmixupError, match="not a run directory"):
        build_report(tmp_path)
    done = subprocess.run(
        [*LMMIXUP, "report", str(tmp_path / "nope")], capture_output=True, text=True, check=False
    )
    assert (
        done.returncode == 2 and done.stderr.startswith("error: ") and "no such run" in done.stderr
    )
    assert len(done.stderr.strip().splitlines()) == 1


def test_report_command_writes_the_file(full_run, tmp_path):
    help_text = subprocess.run(
        [*LMMIXUP, "report", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "lmmixup report runs/demo -o report.html" in help_text
    out = tmp_path / "out" / "r.html"
    done = subprocess.run(
        [*LMMIXUP, "report", str(full_run), "-o", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout and out.read_text().startswith("<!DOCTYPE html>")
    assert write_report(full_run) == full_run / "report.html"


def test_run_pipeline_writes_the_report(tmp_path, monkeypatch):
    from lmmixup.config import RunConfig
    from lmmixup.workflows import pipeline

    monkeypatch.setattr(pipeline, "STAGES", [])
    summary = pipeline.run_pipeline(RunConfig(), tmp_path / "run")
    assert summary["report"] == str(tmp_path / "run" / "report.html")
    assert "Stages: records and time" in (tmp_path / "run" / "report.html").read_text()
    assert (
        json.loads((tmp_path / "run" / "summary.json").read_text())["report"] == summary["report"]
    )


def test_plots_count_and_scale():
    svg = histogram([0.0, 0.3, 0.3, 0.9, 1.0], title="h", bins=2)
    assert re.findall(r": (\d+)</title></rect>", svg) == ["3", "2"]  # the maximum is counted
    assert nice_ticks(0, 7, integer=True) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 0.9) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


# ---------------------------------------------------------------------------- headless Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (CI installs Debian's chromium)",
)


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "CI=true but chromium is not installed"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _console(done: subprocess.CompletedProcess) -> list[str]:
    """Console messages (errors, warnings, CSP violations, uncaught exceptions) of the page."""
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def _pixels(png: bytes):
    """Decode an 8-bit, non-interlaced RGB(A) PNG into an (h, w, channels) uint8 array."""
    import numpy as np

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, data = 8, []
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind, body = png[position + 4 : position + 8], png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            data.append(body)
        position += 12 + length
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(data)), np.uint8).reshape(height, -1)
    image = np.zeros((height, width * bpp), np.uint8)
    previous = np.zeros(width * bpp, np.uint8)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:]
        if kind == 0:
            line = row.copy()
        elif kind == 1:  # sub: a running sum per channel
            line = np.cumsum(row.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # up
            line = row + previous
        else:  # average or paeth: each byte depends on the one decoded before it
            out, up = bytearray(row.tobytes()), previous.tobytes()
            for i in range(len(out)):
                a = out[i - bpp] if i >= bpp else 0
                b, c = up[i], (up[i - bpp] if i >= bpp else 0)
                if kind == 3:
                    guess = (a + b) >> 1
                else:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    guess = a if pa <= pb and pa <= pc else b if pb <= pc else c
                out[i] = (out[i] + guess) & 255
            line = np.frombuffer(bytes(out), np.uint8)
        image[y] = line
        previous = line
    return image.reshape(height, width, bpp)[:, :, :3].astype(int)


@needs_chromium
def test_report_renders_in_chromium_with_its_plots(full_run, tmp_path):
    page = write_report(full_run)
    html = page.read_text()
    shot = tmp_path / "report.png"
    painted = _chromium(
        page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000"
    )
    assert _console(painted) == []
    pixels = _pixels(shot.read_bytes())
    assert pixels.shape[:2] == (4000, 1280)
    assert (pixels.min(axis=2) < 240).sum() > 50_000  # text, tables and plots, not a blank page
    bar = tuple(int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5))
    assert (abs(pixels - bar).sum(axis=2) < 30).sum() > 5_000  # the plots' bars were painted

    dom = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert _console(dom) == []
    assert 'data-rendered="yes"' in dom.stdout  # the inline script ran
    plots = dom.stdout.count('<svg class="plot"')
    assert plots >= 10 and plots == html.count('<svg class="plot"')
    assert dom.stdout.count("<rect") >= html.count("<rect")


@needs_chromium
def test_the_chromium_checks_catch_errors_and_blank_pages(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'unsafe-inline'\"><body><script>console.error('boom')</script>"
        '<img src="https://example.invalid/x.png"></body>'
    )
    console = _console(_chromium(bad, tmp_path / "profile", "--dump-dom"))
    assert any("boom" in line for line in console)
    assert any("Content Security Policy" in line for line in console)
    blank, shot = tmp_path / "blank.html", tmp_path / "blank.png"
    blank.write_text("<!DOCTYPE html><body style='background:#fff'></body>")
    _chromium(blank, tmp_path / "profile", f"--screenshot={shot}", "--window-size=200,100")
    assert (_pixels(shot.read_bytes()).min(axis=2) < 240).sum() == 0


# ------------------------------------------------------- what a person reads first, and folders


def test_the_page_names_models_samples_rows_links_files_and_keeps_reasons_whole(full_run, tmp_path):
    html = build_report(full_run)
    assert html.index('id="no-warnings"') < html.index("<nav>")  # the warnings panel first
    assert "No quality warnings to show" in html  # this synthetic run has no summary.json
    models = _section(html, "models")
    assert "<td>judge</td><td>openai</td><td>judge-7b</td><td>mode generate</td>" in models
    assert "<td>distiller</td><td>hf</td><td>runs/distiller/grpo/final</td>" in models
    assert "bundled:minilm</td><td>for rate, cluster</td>" in models
    rows = _section(html, "training_rows")
    assert rows.count('<span class="origin-distilled">distilled</span> <code>') == 2
    assert rows.count('<span class="origin-original">original</span> <code>') == 4
    samples = _section(html, "samples")
    assert "3 members · cohesion 0.780 · <span" in samples
    assert f'<span class="outcome">rejected: {LONG_REASON}</span>' in samples
    assert "incoherent (below min_cohesion): not distilled" in samples
    assert "re-rated score 5, kept, selected</span>" in samples
    rejects = _section(html, "rejects")
    assert f"<td>{LONG_REASON}</td>" in rejects  # the table row, whole
    chart = re.search(r'<svg[^>]*aria-label="distill: rejects by reason".*?</svg>', rejects, re.S)
    chart_text = re.sub(r"<title>.*?</title>|<[^>]+>", " ", chart.group(0))
    assert "END" in chart_text and "…" not in chart_text  # the chart's label wraps, not cut
    files = _section(html, "files")
    assert '<a href="rate/rated.jsonl">rate/rated.jsonl</a>' in files
    assert '<a href="experiment/results.json">' in files
    elsewhere = build_report(full_run, link_base=tmp_path / "reports")
    assert '<a href="../run/rate/rated.jsonl">rate/rated.jsonl</a>' in elsewhere
    (full_run / "summary.json").write_text(json.dumps({"warnings": []}))
    assert "<b>No quality warnings</b> for this run" in build_report(full_run)


def make_folder(run_dir: Path, folder: Path) -> Path:
    """The files the standalone commands would write for the run, in one folder, under the
    names a user might pick; rate's with the manifest `lmmixup rate -o` writes beside it."""
    from lmmixup.runtime.runner import run_file_stage

    folder.mkdir()
    copies = {
        "pool.jsonl": "import/pool.jsonl",
        "high.jsonl": "split/high.jsonl",
        "low-part.jsonl": "split/low.jsonl",
        "groups.jsonl": "cluster/clusters.jsonl",
        "merged.jsonl": "distill/distilled.jsonl",
        "merged.rejects.jsonl": "distill/rejects.jsonl",
        "final.jsonl": "select/train.jsonl",
        "final.why.jsonl": "select/train.why.jsonl",
    }
    for name, source in copies.items():
        shutil.copy(run_dir / source, folder / name)
    judged = folder / "judged.jsonl"
    config = {"judge": {"backend": "openai", "model": "judge-7b"}, "mode": "generate"}

    def body(stage) -> None:
        shutil.copy(run_dir / "rate" / "rated.jsonl", judged)
        stage.counts.update({"rated": 23, "failed": 1})

    run_file_stage(judged, "rate", inputs=[], config=config, body=body)
    (folder / "notes.jsonl").write_text('{"something": "else"}\n')
    return folder


def test_a_folder_of_stage_outputs_gets_a_report(full_run, tmp_path):
    folder = make_folder(full_run, tmp_path / "outputs")
    page = write_report(folder)
    html = page.read_text()
    assert_self_contained(html)
    assert "Folder of stage outputs" in html and "folder of stage outputs" in html
    stages = _section(html, "stages")
    for stage in ("import", "rate", "split", "cluster", "distill", "select"):
        assert f"<td>{stage}</td>" in stages
    assert "rated 23" in stages  # rate's counts, from its manifest
    assert "23 rated, 1 failed" in _section(html, "scores")
    samples = _section(html, "samples")
    assert "Merged answer of c000000" in samples and LONG_REASON in samples
    assert "member_similarity" in samples and "not found" not in samples  # from low-part.jsonl
    assert "<td>judge</td><td>openai</td><td>judge-7b</td>" in _section(html, "models")
    assert _section(html, "training_rows").count('origin-distilled">distilled</span> <code>') == 2
    files = _section(html, "files")
    assert '<a href="judged.jsonl">' in files and '<a href="merged.rejects.jsonl">' in files
    assert "could not place: notes.jsonl" in files


@needs_chromium
def test_a_folder_report_renders_in_chromium(full_run, tmp_path):
    page = write_report(make_folder(full_run, tmp_path / "outputs"))
    dom = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert _console(dom) == []
    assert 'data-rendered="yes"' in dom.stdout and 'id="training_rows"' in dom.stdout

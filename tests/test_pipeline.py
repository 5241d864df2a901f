"""`lmmixup run`: stages in a run directory, summary.json, skip on re-run."""

from __future__ import annotations

import json
import subprocess
import sys


def test_run_writes_summary_and_skips_finished_stages(tmp_path):
    pool = tmp_path / "mine.jsonl"
    pool.write_text(
        '{"prompt": "p1", "completion": "c1"}\n{"prompt": "p2", "completion": "c2"}\nnot json\n'
    )
    config = tmp_path / "run.yaml"
    config.write_text(f"import:\n  sources: [{pool}]\n")
    cmd = [
        sys.executable,
        "-m",
        "lmmixup.cli",
        "-q",
        "run",
        str(config),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["import"]["counts"]["kept"] == 2
    assert summary["stages"]["import"]["counts"]["rejected"] == 1
    assert summary["outputs"]["import.pool"].endswith("import/pool.jsonl")
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "skipped" in second.stdout
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]["import"][
        "skipped"
    ]

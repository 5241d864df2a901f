"""The stage runner: skip, resume after kill -9 without loss or duplicates, refuse on change."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmmixup.errors import StageMismatchError
from lmmixup.io import compact_done, read_records, repair_tail, write_records
from lmmixup.runner import REJECT_KEY, numbered, process_records, run_stage, stage_is_current

HERE = Path(__file__).parent


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_minus_9_then_rerun_gives_every_record_exactly_once(tmp_path):
    cmd = [sys.executable, str(HERE / "slow_stage.py"), str(tmp_path), "200"]
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = subprocess.Popen(cmd, env=env)
    out = tmp_path / "double" / "out.jsonl"
    deadline = time.time() + 60
    while _count_lines(out) < 40 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = _count_lines(out)
    assert 0 < written_before < 200
    manifest = json.loads((tmp_path / "double" / "manifest.json").read_text())
    assert manifest["status"] == "running"

    subprocess.run(cmd, env=env, check=True)
    records = read_records(out)
    assert sorted(r["id"] for r in records) == sorted(f"r{i}" for i in range(200))
    assert all(r["value"] == 2 * int(r["id"][1:]) for r in records)
    manifest = json.loads((tmp_path / "double" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"]["already_done"] >= written_before - 4
    assert manifest["history"][-1]["resumed"] is True


def _body_counting(calls: list, source: Path):
    def fn(batch):
        calls.append(len(batch))
        return [{**r, REJECT_KEY: "odd"} if int(r["id"]) % 2 else r for r in batch]

    def body(stage):
        stage.counts.update(
            process_records(
                numbered(source),
                fn,
                output=stage.file("out.jsonl"),
                rejects=stage.file("rejects.jsonl"),
                source=str(source),
                batch_size=3,
            )
        )

    return body


def test_complete_stage_is_skipped_and_changes_are_refused(tmp_path):
    source = tmp_path / "in.jsonl"
    write_records(source, ({"id": str(i)} for i in range(7)))
    calls: list[int] = []
    first = run_stage(
        tmp_path, "s", inputs=[source], config={"a": 1}, body=_body_counting(calls, source)
    )
    assert not first.skipped and sum(calls) == 7
    assert first.manifest["counts"] == {
        "already_done": 0,
        "written": 4,
        "rejected": 3,
        "stopped_early": 0,
    }
    rejects = read_records(tmp_path / "s" / "rejects.jsonl")
    assert [r["line"] for r in rejects] == [2, 4, 6] and rejects[0]["reason"] == "odd"

    again = run_stage(
        tmp_path, "s", inputs=[source], config={"a": 1}, body=_body_counting(calls, source)
    )
    assert again.skipped and sum(calls) == 7

    with pytest.raises(StageMismatchError, match=r"config \(a\).*--force"):
        run_stage(
            tmp_path, "s", inputs=[source], config={"a": 2}, body=_body_counting(calls, source)
        )
    write_records(source, ({"id": str(i)} for i in range(8)))
    with pytest.raises(StageMismatchError, match=r"inputs \(in.jsonl\)"):
        run_stage(
            tmp_path, "s", inputs=[source], config={"a": 1}, body=_body_counting(calls, source)
        )

    def forced():
        body = _body_counting(calls, source)
        return run_stage(tmp_path, "s", inputs=[source], config={"a": 1}, body=body, force=True)

    assert not forced().skipped and len(read_records(tmp_path / "s" / "out.jsonl")) == 4
    assert forced().skipped  # --force redoes changed stages only


def test_follow_inputs_redoes_on_new_inputs_but_still_refuses_a_new_config(tmp_path):
    source = tmp_path / "in.jsonl"
    write_records(source, ({"id": str(i)} for i in range(4)))
    calls: list[int] = []

    def run(config, **flags):
        body = _body_counting(calls, source)
        return run_stage(tmp_path, "s", inputs=[source], config=config, body=body, **flags)

    run({"a": 1}, follow_inputs=True)
    write_records(source, ({"id": str(i)} for i in range(6)))  # an earlier stage was redone
    redone = run({"a": 1}, follow_inputs=True)
    assert not redone.skipped and len(read_records(tmp_path / "s" / "out.jsonl")) == 3
    with pytest.raises(StageMismatchError, match=r"config \(a\)"):
        run({"a": 2}, follow_inputs=True)


def test_unfinished_records_are_dropped_and_redone(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text(
        '{"id": "a", "ok": true}\n{"id": "b", "ok": false}\n{"id": "a", "ok": true}\n{"id": "c", "o'
    )
    kept = compact_done(path, lambda r: r["ok"])
    assert list(kept) == ["a"]
    assert read_records(path) == [{"id": "a", "ok": True}]


def test_repair_tail_cuts_only_a_partial_line(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n')
    repair_tail(path)
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n'
    path.write_text('{"id": 1}\n{"id"')
    repair_tail(path)
    assert path.read_text() == '{"id": 1}\n'
    path.write_text('{"id"')
    repair_tail(path)
    assert path.read_text() == ""


def test_stage_is_current_only_for_a_complete_stage_with_the_same_config_and_inputs(tmp_path):
    source = tmp_path / "in.jsonl"
    write_records(source, [{"id": "a"}])
    args = {"inputs": [source], "config": {"k": 1}}
    assert not stage_is_current(tmp_path, "s", **args)  # never run
    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "s", **args, body=lambda stage: (_ for _ in ()).throw(RuntimeError()))
    assert not stage_is_current(tmp_path, "s", **args)  # interrupted
    run_stage(tmp_path, "s", **args, body=lambda stage: None)
    assert stage_is_current(tmp_path, "s", **args)
    assert not stage_is_current(tmp_path, "s", inputs=[source], config={"k": 2})
    write_records(source, [{"id": "b"}])
    assert not stage_is_current(tmp_path, "s", **args)

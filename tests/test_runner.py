"""The stage runner: skip, resume after kill -9 without loss or duplicates, refuse on change."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmmixup.errors import LmmixupError, StageMismatchError
from lmmixup.hashing import hash_file
from lmmixup.io import jsonl as io
from lmmixup.io.jsonl import (
    AppendWriter,
    compact_done,
    read_records,
    repair_tail,
    write_records,
    write_text_atomic,
)
from lmmixup.runtime.executor import REJECT_KEY, numbered, process_records
from lmmixup.runtime.runner import run_file_stage, run_stage, stage_is_current

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


def _counted_stage(run_dir: Path, source: Path, calls: list, **flags):
    """A stage over `source` that declares its outputs (checked when it is skipped)."""
    body = _body_counting(calls, source)
    outputs = ["out.jsonl", "rejects.jsonl"]
    return run_stage(
        run_dir, "s", inputs=[source], config={"a": 1}, body=body, outputs=outputs, **flags
    )


def _source(path: Path, count: int = 7) -> Path:
    write_records(path, ({"id": str(i)} for i in range(count)))
    return path


def test_a_complete_stage_whose_output_is_gone_is_redone_and_says_so(tmp_path, caplog):
    source, calls = _source(tmp_path / "in.jsonl"), []
    _counted_stage(tmp_path, source, calls)
    (tmp_path / "s" / "out.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="lmmixup"):
        again = _counted_stage(tmp_path, source, calls)
    assert not again.skipped and sum(calls) == 14
    assert "stage 's'" in caplog.text and "out.jsonl is missing" in caplog.text
    assert len(read_records(tmp_path / "s" / "out.jsonl")) == 4
    assert _counted_stage(tmp_path, source, calls).skipped


def test_a_complete_stage_whose_output_was_edited_is_refused_unless_forced(tmp_path):
    source, calls = _source(tmp_path / "in.jsonl"), []
    _counted_stage(tmp_path, source, calls)
    with open(tmp_path / "s" / "out.jsonl", "a") as handle:
        handle.write('{"id": "added by hand"}\n')
    assert not stage_is_current(tmp_path, "s", [source], {"a": 1})
    with pytest.raises(StageMismatchError, match=r"out\.jsonl changed since the stage completed"):
        _counted_stage(tmp_path, source, calls)
    assert not _counted_stage(tmp_path, source, calls, force=True).skipped
    assert len(read_records(tmp_path / "s" / "out.jsonl")) == 4


def test_an_unreadable_manifest_is_named_and_its_stage_redone_from_scratch(tmp_path, caplog):
    source, calls = _source(tmp_path / "in.jsonl"), []
    _counted_stage(tmp_path, source, calls)
    manifest = tmp_path / "s" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])  # truncated
    assert not stage_is_current(tmp_path, "s", [source], {"a": 1})
    with caplog.at_level(logging.WARNING, logger="lmmixup"):
        again = _counted_stage(tmp_path, source, calls)
    assert str(manifest) in caplog.text and "unreadable" in caplog.text
    assert not again.skipped and sum(calls) == 14
    assert len(read_records(tmp_path / "s" / "out.jsonl")) == 4  # redone, not appended to
    assert json.loads(manifest.read_text())["status"] == "complete"


def test_a_moved_run_dir_keeps_its_done_stages(tmp_path):
    run, calls = tmp_path / "run", []
    _counted_stage(run, _source(run / "in.jsonl"), calls)
    manifest = json.loads((run / "s" / "manifest.json").read_text())
    assert list(manifest["inputs"]) == ["in.jsonl"]  # relative to the run directory
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    assert _counted_stage(moved, moved / "in.jsonl", calls).skipped and sum(calls) == 7


def test_an_older_manifest_naming_inputs_by_absolute_path_is_still_current(tmp_path):
    source, calls = _source(tmp_path / "in.jsonl"), []
    _counted_stage(tmp_path, source, calls)
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["outputs"]
    manifest["inputs"] = {"/somewhere/else/in.jsonl": hash_file(source)}
    path.write_text(json.dumps(manifest))
    assert stage_is_current(tmp_path, "s", [source], {"a": 1})
    assert _counted_stage(tmp_path, source, calls).skipped


def test_a_folder_never_hashes_like_a_file(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    folders = {name: tmp_path / name for name in ("none", "a", "b", "sub")}
    for folder in folders.values():
        folder.mkdir()
    (folders["a"] / "x").write_text("")
    (folders["b"] / "y").write_text("")
    (folders["sub"] / "x").mkdir()
    digests = [hash_file(tmp_path / "empty.txt"), *map(hash_file, folders.values())]
    assert len(set(digests)) == len(digests)


def _disk_full(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_atomic_write_keeps_the_old_file_leaves_no_temp_file_and_names_it(
    tmp_path, monkeypatch
):
    target = tmp_path / "out.jsonl"
    write_records(target, [{"id": 1}])
    monkeypatch.setattr(io.os, "fsync", _disk_full)
    full = f"no space left on device writing {target}; free space and re-run"
    with pytest.raises(LmmixupError, match=full):
        write_records(target, [{"id": 2}])
    with pytest.raises(LmmixupError, match=full):
        write_text_atomic(target, "text")
    monkeypatch.undo()

    def interrupted():
        yield {"id": 3}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_records(target, interrupted())
    assert os.listdir(tmp_path) == ["out.jsonl"]
    assert read_records(target) == [{"id": 1}]


def test_a_full_disk_while_appending_names_the_file(tmp_path, monkeypatch):
    target = tmp_path / "out.jsonl"
    with AppendWriter(target) as writer:
        monkeypatch.setattr(io.os, "fsync", _disk_full)
        with pytest.raises(LmmixupError, match=f"no space left on device writing {target}"):
            writer.write_many([{"id": 1}])
        monkeypatch.undo()


def test_a_file_stage_refuses_an_input_as_output_and_a_non_jsonl_output_before_any_work(
    tmp_path,
):
    calls: list[int] = []

    def run(source: Path, output: Path):
        body = _body_counting(calls, source)
        return run_file_stage(output, "s", inputs=[source], config={}, body=body)

    source = _source(tmp_path / "in.jsonl")
    with pytest.raises(LmmixupError, match="output .*in.jsonl would overwrite the input"):
        run(source, source)
    rejects_named = _source(tmp_path / "out.rejects.jsonl")  # what OUTPUT's rejects would be
    with pytest.raises(LmmixupError, match="output .*out.rejects.jsonl would overwrite the input"):
        run(rejects_named, tmp_path / "out.jsonl")
    with pytest.raises(LmmixupError, match="out.parquet: records are written as JSONL only"):
        run(source, tmp_path / "out.parquet")
    assert calls == [] and read_records(source) == read_records(rejects_named)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.rejects.jsonl"]

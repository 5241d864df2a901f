"""Claiming outputs: no output is an input or another output, JSONL only, one writer at a time."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from lmmixup.errors import LmmixupError
from lmmixup.io import outputs
from lmmixup.io.outputs import (
    OutputLockedError,
    check_outputs,
    claim_outputs,
    output_lock,
    run_dir_lock,
)

HOLD = """
import sys, time
from lmmixup.io.outputs import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_an_output_equal_to_an_input_is_refused_however_it_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jsonl").write_text("")
    with pytest.raises(
        LmmixupError, match=r"output pool\.jsonl would overwrite the input .*/pool\.jsonl"
    ):
        check_outputs([tmp_path / "pool.jsonl"], ["./pool.jsonl"])
    os.symlink(tmp_path / "pool.jsonl", tmp_path / "link.jsonl")
    with pytest.raises(LmmixupError, match="link.jsonl would overwrite the input pool.jsonl"):
        check_outputs(["pool.jsonl"], ["link.jsonl"])


def test_two_outputs_on_one_file_and_an_output_inside_an_input_folder_are_refused(tmp_path):
    with pytest.raises(LmmixupError, match=r"x\.jsonl and .*x\.jsonl are the same file"):
        check_outputs([], [tmp_path / "x.jsonl", tmp_path / "sub" / ".." / "x.jsonl"])
    (tmp_path / "dataset").mkdir()
    with pytest.raises(LmmixupError, match="would overwrite the input"):
        check_outputs([tmp_path / "dataset"], [tmp_path / "dataset" / "out.jsonl"])
    check_outputs([tmp_path / "in.jsonl"], [tmp_path / "out.jsonl", tmp_path / "out.why.jsonl"])


def test_a_record_output_that_is_not_jsonl_is_refused(tmp_path):
    with pytest.raises(LmmixupError, match=r"x\.parquet: records are written as JSONL only"):
        check_outputs([], [tmp_path / "x.parquet"], records=[tmp_path / "x.parquet"])


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of tmp_path/out.jsonl."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "out.jsonl")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_with_the_path_and_the_pid_holding_it(tmp_path, holder):
    with pytest.raises(OutputLockedError) as refused, output_lock(tmp_path / "out.jsonl"):
        pass
    message = str(refused.value)
    assert f"out.jsonl is being written by process {holder.pid} on {socket.gethostname()}" in (
        message
    )
    with claim_outputs([], [tmp_path / "other.jsonl"]):  # another output is free
        assert (tmp_path / "other.jsonl.lock").read_text().split()[0] == str(os.getpid())


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_file = tmp_path / "out.jsonl.lock"
    assert lock_file.read_text().split()[0] == str(holder.pid)  # left behind by kill -9
    with output_lock(tmp_path / "out.jsonl"):
        assert lock_file.read_text().split()[0] == str(os.getpid())
    assert not lock_file.exists()


def test_a_process_may_take_a_lock_it_holds_and_keeps_it_until_the_outer_release(tmp_path):
    lock_file = tmp_path / outputs.RUN_DIR_LOCK
    with run_dir_lock(tmp_path):
        with run_dir_lock(tmp_path):
            pass
        assert lock_file.exists()
    assert not lock_file.exists()


def test_without_flock_a_live_pid_holds_the_lock_and_a_dead_one_is_stale(tmp_path, monkeypatch):
    def no_flock(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(outputs.fcntl, "flock", no_flock)
    lock_file = tmp_path / "out.jsonl.lock"
    lock_file.write_text(f"{os.getppid()} {socket.gethostname()}\n")
    refused = pytest.raises(OutputLockedError, match=f"process {os.getppid()}")
    with refused, output_lock(tmp_path / "out.jsonl"):
        pass
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    lock_file.write_text(f"{int(finished.stdout)} {socket.gethostname()}\n")  # a dead process
    with output_lock(tmp_path / "out.jsonl"):
        assert lock_file.read_text().split()[0] == str(os.getpid())

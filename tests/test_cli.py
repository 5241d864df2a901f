"""The command line: help with examples, config init/check, errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmmixup.io.jsonl import read_records, write_records

LMMIXUP = [sys.executable, "-m", "lmmixup.cli"]


def _run(*args, cwd=None):
    return subprocess.run([*LMMIXUP, *args], capture_output=True, text=True, check=False, cwd=cwd)


@pytest.mark.parametrize(
    "command", [["data", "import"], ["run"], ["config", "init"], ["config", "check"]]
)
def test_every_command_has_help_with_an_example(command):
    done = _run(*command, "--help")
    assert done.returncode == 0
    assert "lmmixup " + command[0] in done.stdout.split("Example")[-1]


def test_help_does_not_import_heavy_libraries():
    code = "import sys; from lmmixup.cli.app import app; print(sorted(m for m in ('torch','transformers','faiss','numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_config_init_then_check(tmp_path):
    assert _run("config", "init", "-o", "c.yaml", "--demo", cwd=tmp_path).returncode == 0
    assert _run("config", "check", "c.yaml", cwd=tmp_path).stdout.strip() == "c.yaml: ok"
    again = _run("config", "init", "-o", "c.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "bad.yaml").write_text("rate:\n  modee: logprob\n")
    bad = _run("config", "check", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown key 'rate.modee'" in bad.stderr


SOURCES = "import: {sources: [gsm8k]}\n"


def test_config_check_validates_an_experiment_section(tmp_path):
    (tmp_path / "exp.yaml").write_text(
        "import: {sources: [gsm8k], holdout_fraction: 0.2}\n"
        "experiment:\n  arms: [random, mixup-3:7]\n  eval: {tasks: [lmmixup_heldout]}\n"
    )
    good = _run("config", "check", "exp.yaml", cwd=tmp_path)
    assert good.returncode == 0 and "experiment section" in good.stdout
    (tmp_path / "arm.yaml").write_text(SOURCES + "experiment:\n  arms: [random, mixup-37]\n")
    bad_arm = _run("config", "check", "arm.yaml", cwd=tmp_path)
    assert bad_arm.returncode == 2 and "unknown arm 'mixup-37'" in bad_arm.stderr
    (tmp_path / "ft.yaml").write_text(SOURCES + "experiment:\n  finetune: {epochz: 1}\n")
    bad_ft = _run("config", "check", "ft.yaml", cwd=tmp_path)
    assert bad_ft.returncode == 2 and "epochz" in bad_ft.stderr
    (tmp_path / "held.yaml").write_text(
        SOURCES + "experiment:\n  eval: {tasks: [lmmixup_heldout]}\n"
    )
    no_rows = _run("config", "check", "held.yaml", cwd=tmp_path)
    assert no_rows.returncode == 2 and "holdout_fraction" in no_rows.stderr


def _rated(path: Path, count: int = 6) -> Path:
    """Rated records; every third one a failed rating."""
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"question {i}",
            "completion": f"answer {i}",
            "source": "s",
            **(
                {"rating": None, "rating_error": "judge failed"}
                if i % 3 == 0
                else {"rating": {"score": i % 6}}
            ),
        }
        for i in range(count)
    ]
    write_records(path, rows)
    return path


SAME_PATH_COMMANDS = {
    "rate": ["rate", "rated.jsonl", "-o", "rated.jsonl"],
    "cluster": ["cluster", "rated.jsonl", "-o", "rated.jsonl"],
    "split": ["split", "rated.jsonl", "--high", "rated.jsonl", "--low", "low.jsonl"],
    "select": ["select", "--original", "rated.jsonl", "--mixup", "m.jsonl", "-o", "./rated.jsonl"],
    "data import": ["data", "import", "rated.jsonl", "-o", "rated.jsonl"],
    "decontaminate": [
        "decontaminate",
        "rated.jsonl",
        "--against",
        "t=rated.jsonl",
        "-o",
        "rated.jsonl",
    ],
}


@pytest.mark.parametrize("command", SAME_PATH_COMMANDS.values(), ids=SAME_PATH_COMMANDS)
def test_no_command_writes_over_its_input(tmp_path, command):
    rated = _rated(tmp_path / "rated.jsonl")
    before = rated.read_bytes()
    done = _run(*command, cwd=tmp_path)
    assert done.returncode == 2 and "would overwrite the input rated.jsonl" in done.stderr
    assert rated.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["rated.jsonl"]


def test_split_refuses_one_file_for_high_and_low_and_two_splits_keep_their_unrated(tmp_path):
    _rated(tmp_path / "rated.jsonl")
    same = _run("split", "rated.jsonl", "--high", "x.jsonl", "--low", "x.jsonl", cwd=tmp_path)
    assert same.returncode == 2 and "x.jsonl and x.jsonl are the same file" in same.stderr
    for name in ("a", "b"):
        split = ["split", "rated.jsonl", "--high", f"{name}.high.jsonl", "--low", f"{name}.jsonl"]
        done = _run(*split, "--threshold", "3" if name == "a" else "5", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"-> {name}.unrated.jsonl" in done.stdout
    for name in ("a", "b"):
        parts = [read_records(tmp_path / f"{name}.{part}.jsonl") for part in ("high", "unrated")]
        ids = sorted(
            r["id"] for part in [*parts, read_records(tmp_path / f"{name}.jsonl")] for r in part
        )
        assert ids == sorted(f"r{i}" for i in range(6))
        assert [r["id"] for r in parts[1]] == ["r0", "r3"]


@pytest.mark.parametrize(
    "command",
    [
        ["rate", "pool.jsonl", "-o", "rated.parquet"],
        ["split", "pool.jsonl", "--high", "high.parquet", "--low", "low.jsonl"],
    ],
    ids=lambda command: command[0],
)
def test_a_record_output_that_is_not_jsonl_is_refused_before_any_work(tmp_path, command):
    _rated(tmp_path / "pool.jsonl")
    done = _run(*command, cwd=tmp_path)
    assert done.returncode == 2 and "records are written as JSONL only" in done.stderr
    assert os.listdir(tmp_path) == ["pool.jsonl"]


BOOM = """
import sys
from lmmixup.cli import app as cli

@cli.app.command("boom")
def boom(kind: str) -> None:
    raise {"key": KeyError("id"), "os": PermissionError(13, "Permission denied", "x.jsonl")}[kind]

sys.argv = ["lmmixup", *sys.argv[1:]]
cli.main()
"""


def test_an_unexpected_error_exits_2_without_a_python_class_name_and_v_shows_the_traceback():
    def boom(*args):
        return subprocess.run([sys.executable, "-c", BOOM, *args], capture_output=True, text=True)

    internal = boom("boom", "key")
    assert internal.returncode == 2
    assert internal.stderr == (
        "internal error: 'id'; run with -v for the traceback, and please report it\n"
    )
    denied = boom("boom", "os")
    assert (denied.returncode, denied.stderr) == (2, "error: x.jsonl: Permission denied\n")
    verbose = boom("-v", "boom", "key")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


HOLD_RUN_DIR = """
import sys, time
from lmmixup.io.outputs import run_dir_lock
with run_dir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_a_run_dir_in_use_is_refused_with_the_pid(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_RUN_DIR, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        done = _run("run", "--run-dir", str(tmp_path / "run"))
        experiment = _run("experiment", "--run-dir", str(tmp_path / "run"))
    finally:
        holder.kill()
        holder.wait()
    for refused in (done, experiment):
        assert refused.returncode == 2
        assert f"run is being written by process {holder.pid}" in refused.stderr
    assert sorted(os.listdir(tmp_path / "run")) == ["lmmixup.lock"]


def test_mixture_build_keeps_the_rejected_seed_rows(tmp_path):
    seeds = [
        {
            "id": f"s{i}",
            "prompt": f"Explain topic {i} in a few sentences, please.",
            "completion": (
                f"Topic {i} is simple. It has a first part. It has a second part. It ends well."
            ),
        }
        for i in range(8)
    ]
    write_records(tmp_path / "seeds.jsonl", seeds)
    with open(tmp_path / "seeds.jsonl", "a") as handle:
        handle.write('{"id": "broken"\n')
    command = ["mixture", "build", "seeds.jsonl", "-o", "mix", "--no-embed", "--set", "min_size=2"]
    done = _run(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rejects = read_records(tmp_path / "mix" / "rejects.jsonl")
    assert [(r["line"], r["file"].endswith("seeds.jsonl")) for r in rejects] == [(9, True)]
    assert "1 seed rows could not be read -> mix/rejects.jsonl" in done.stdout


def test_a_baseline_short_of_its_budget_stops_unless_allow_short(tmp_path):
    _rated(tmp_path / "pool.jsonl", count=6)  # random draws from every row, rated or not
    args = ["select", "--baseline", "random", "--pool", "pool.jsonl", "-o", "train.jsonl"]
    short = _run(*args, "--budget", "10", cwd=tmp_path)
    assert short.returncode == 2 and "--allow-short" in short.stderr
    allowed = _run(*args, "--budget", "10", "--allow-short", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert len(read_records(tmp_path / "train.jsonl")) == 6


def test_flags_become_overrides_after_set_and_only_when_given():
    from lmmixup.cli.options import in_section, overrides

    judge = in_section("judge", model="m", base_url=None)
    assert overrides(["seed=1"], **judge, curate=False, limit=None) == [
        "seed=1",
        'judge.model="m"',
        "curate=false",
    ]

"""The command line: help with examples, config init/check, errors as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
    code = "import sys; from lmmixup.cli import app; print(sorted(m for m in ('torch','transformers','faiss','numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_config_init_then_check(tmp_path):
    assert _run("config", "init", "-o", "c.yaml", cwd=tmp_path).returncode == 0
    assert _run("config", "check", "c.yaml", cwd=tmp_path).stdout.strip() == "c.yaml: ok"
    again = _run("config", "init", "-o", "c.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "bad.yaml").write_text("rate:\n  modee: logprob\n")
    bad = _run("config", "check", "bad.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown key 'rate.modee'" in bad.stderr


def test_config_check_validates_an_experiment_section(tmp_path):
    (tmp_path / "exp.yaml").write_text(
        "import: {holdout_fraction: 0.2}\n"
        "experiment:\n  arms: [random, mixup-3:7]\n  eval: {tasks: [lmmixup_heldout]}\n"
    )
    good = _run("config", "check", "exp.yaml", cwd=tmp_path)
    assert good.returncode == 0 and "experiment section" in good.stdout
    (tmp_path / "arm.yaml").write_text("experiment:\n  arms: [random, mixup-37]\n")
    bad_arm = _run("config", "check", "arm.yaml", cwd=tmp_path)
    assert bad_arm.returncode == 2 and "unknown arm 'mixup-37'" in bad_arm.stderr
    (tmp_path / "ft.yaml").write_text("experiment:\n  finetune: {epochz: 1}\n")
    bad_ft = _run("config", "check", "ft.yaml", cwd=tmp_path)
    assert bad_ft.returncode == 2 and "epochz" in bad_ft.stderr
    (tmp_path / "held.yaml").write_text("experiment:\n  eval: {tasks: [lmmixup_heldout]}\n")
    no_rows = _run("config", "check", "held.yaml", cwd=tmp_path)
    assert no_rows.returncode == 2 and "holdout_fraction" in no_rows.stderr

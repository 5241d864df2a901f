"""Bad stage inputs: one line naming the file, line and field, exit 2, and no model loaded.

Every stage command reads its whole input before any model loads. The commands run in this
process (`lmmixup.cli.app.main`) with every model loader replaced by one that fails the test.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmmixup.cli.app import main

POOL_ROW = {"id": "a", "prompt": "What is 2 + 2?", "completion": "4", "source": "s"}
RATED_ROW = {**POOL_ROW, "rating": {"overall": 8, "score": 4}}
CLUSTER_ROW = {"cluster_id": "c1", "source": "s", "member_ids": ["a", "b"], "size": 2}
MIXTURE_ROW = {
    "id": "m1",
    "task_type": "qa",
    "members": [{"prompt": "What is 2 + 2?", "completion": "4"}],
    "answer": "Q: What is 2 + 2?\nA: 4",
}
MODEL_LOADERS = (
    "lmmixup.backends.load_generator",
    "lmmixup.backends.embed.load_embedder",
    "lmmixup.backends.hf.HFChatModel",
    "lmmixup.stages.rate.load_embedder",
    "lmmixup.stages.cluster.load_embedder",
    "lmmixup.stages.select.load_embedder",
    "lmmixup.evaluation.distiller.load_reward_set",
)


DROP = object()


def _row(base: dict, **changes) -> dict:
    """`base` with fields changed; a change to DROP removes the field."""
    row = {**base, **changes}
    return {key: value for key, value in row.items() if value is not DROP}


def _pool_row(record_id: str, **changes) -> dict:
    return _row(POOL_ROW, id=record_id, **changes)


def _rated_row(record_id: str, **changes) -> dict:
    return _row(RATED_ROW, id=record_id, **changes)


# Each command reads BAD (the file under test); the other files it needs are good.
COMMANDS = {
    "rate": ["rate", "BAD", "-o", "out.jsonl"],
    "split": ["split", "BAD", "--high", "high.jsonl", "--low", "low.jsonl"],
    "cluster": ["cluster", "BAD", "-o", "clusters.out.jsonl"],
    "distill-clusters": ["distill", "BAD", "--pool", "pool.jsonl", "-o", "d.jsonl"],
    "distill-pool": ["distill", "clusters.jsonl", "--pool", "BAD", "-o", "d.jsonl"],
    "select-original": ["select", "--original", "BAD", "--mixup", "rated.jsonl", "-o", "t.jsonl"],
    "select-mixup": ["select", "--original", "rated.jsonl", "--mixup", "BAD", "-o", "t.jsonl"],
    "select-baseline": ["select", "--baseline", "ds2-like", "--pool", "BAD", "-o", "t.jsonl"],
    "select-high": [
        *("select", "--baseline", "high-only", "--pool", "rated.jsonl", "--high", "BAD"),
        *("-o", "t.jsonl"),
    ],
    "eval-distiller": ["eval", "distiller", "m", "--test", "BAD", "-o", "eval"],
    "rewards-library": ["rewards", "build-library", "BAD", "-o", "library"],
}

CASES = [
    # pool records (rate, cluster, distill's --pool)
    ("rate", [_pool_row("a"), _row(POOL_ROW, id=DROP)], "bad.jsonl:2: field 'id' missing"),
    ("rate", [_pool_row("a", source=DROP)], "bad.jsonl:1: field 'source' missing"),
    ("rate", [_pool_row("a", prompt=7)], "field 'prompt' must be a string, got integer 7"),
    ("rate", [_pool_row("a"), _pool_row("a")], "bad.jsonl:2: id 'a' already appears on line 1"),
    ("rate", [], "bad.jsonl holds no records"),
    ("rate", ["not json"], "bad.jsonl:1: invalid JSON"),
    ("cluster", [_row(POOL_ROW, id=3)], "field 'id' must be a non-empty string, got integer 3"),
    ("cluster", [_pool_row("a", task_type="essay")], "field 'task_type' must be one of qa"),
    ("cluster", [], "bad.jsonl holds no records"),
    ("distill-pool", [_pool_row("a"), _pool_row("b", completion=DROP)], ":2: field 'completion'"),
    ("distill-pool", [_pool_row("a")], "clusters.jsonl:1: member 'b' is not in"),
    # rated records (split, select)
    ("split", [_pool_row("a")], "bad.jsonl:1: field 'rating' missing"),
    ("split", [_rated_row("a", rating={"overall": 8})], "field 'rating.score' missing"),
    ("split", [_rated_row("a", rating={"score": 7})], "'rating.score' must be an integer 0-5"),
    ("split", [_rated_row("a", rating={"score": "4"})], 'got string "4"'),
    ("split", [_rated_row("a", rating=None)], "field 'rating_error' missing"),
    (
        "split",
        [_rated_row(i, rating=None, rating_error="judge failed") for i in "ab"],
        "no row of",
    ),
    ("split", [_rated_row("a"), _rated_row("a")], "bad.jsonl:2: id 'a' already appears on line 1"),
    ("split", [], "bad.jsonl holds no records"),
    ("select-original", [_pool_row("a")], "bad.jsonl:1: field 'rating' missing"),
    ("select-original", [], "bad.jsonl holds no records"),
    ("select-mixup", [_rated_row("x", source=DROP)], "bad.jsonl:1: field 'source' missing"),
    ("select-baseline", [_pool_row("a"), _pool_row("b")], "field 'rating' missing"),
    (
        "select-baseline",
        [_rated_row(i, rating=None, rating_error="judge failed") for i in "ab"],
        "no row of",
    ),
    ("select-high", [{"id": "a"}], "bad.jsonl:1: field 'prompt' missing"),
    # cluster records (distill)
    ("distill-clusters", [_row(CLUSTER_ROW, cluster_id=DROP)], ":1: field 'cluster_id' missing"),
    ("distill-clusters", [_row(CLUSTER_ROW, member_ids="a")], "'member_ids' must be a non-empty"),
    ("distill-clusters", [_row(CLUSTER_ROW, member_ids=[])], "'member_ids' must be a non-empty"),
    ("distill-clusters", [_row(CLUSTER_ROW, source=DROP)], "field 'source' missing"),
    ("distill-clusters", [_row(CLUSTER_ROW, size=3)], "field 'size' is integer 3"),
    ("distill-clusters", [CLUSTER_ROW, CLUSTER_ROW], ":2: cluster_id 'c1' already appears"),
    (
        "distill-clusters",
        [CLUSTER_ROW, _row(CLUSTER_ROW, cluster_id="c2", member_ids=["b"], size=1)],
        ":2: member 'b' already appears on line 1",
    ),
    ("distill-clusters", [_row(CLUSTER_ROW, member_ids=["a", "zz"])], ":1: member 'zz' is not"),
    ("distill-clusters", [], "bad.jsonl holds no records"),
    # MIXTURE test records (eval distiller)
    ("eval-distiller", [_row(MIXTURE_ROW, members=DROP)], "bad.jsonl:1: field 'members' missing"),
    ("eval-distiller", [_row(MIXTURE_ROW, answer=DROP)], "field 'answer' missing"),
    ("eval-distiller", [_row(MIXTURE_ROW, task_type="essay")], "'task_type' must be one of"),
    ("eval-distiller", [_row(MIXTURE_ROW, members=[{"prompt": "p"}])], "'members' must be"),
    ("eval-distiller", [], "bad.jsonl holds no records"),
    # rated records (the quality reward's library)
    ("rewards-library", [_rated_row("a", prompt=DROP)], "bad.jsonl:1: field 'prompt' missing"),
    ("rewards-library", [_rated_row("a"), _rated_row("a")], ":2: id 'a' already appears"),
]


@pytest.fixture
def no_models(monkeypatch):
    """Every model loader fails the test; the names of those called are collected."""
    called: list[str] = []

    def loader(name: str):
        def load(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} was called: a model loaded before the input check")

        return load

    for name in MODEL_LOADERS:  # imported first, so that no module binds a patched loader
        importlib.import_module(name.rpartition(".")[0])
    for name in MODEL_LOADERS:
        monkeypatch.setattr(name, loader(name))
    return called


def _write(path: Path, rows: list) -> None:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))


def _good_inputs(folder: Path) -> None:
    _write(folder / "pool.jsonl", [_pool_row("a"), _pool_row("b")])
    _write(folder / "clusters.jsonl", [CLUSTER_ROW])
    _write(folder / "rated.jsonl", [_rated_row("a"), _rated_row("b")])


def _lmmixup(monkeypatch, capsys, folder: Path, args: list[str]) -> tuple[int, str]:
    """Run the command in `folder`; its exit code and stderr."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["lmmixup", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "rows", "expected"),
    CASES,
    ids=[f"{command}-{i}" for i, (command, _, _) in enumerate(CASES)],
)
def test_bad_input_is_one_line_before_any_model(
    tmp_path, monkeypatch, capsys, no_models, command, rows, expected
):
    _good_inputs(tmp_path)
    _write(tmp_path / "bad.jsonl", rows)
    args = ["bad.jsonl" if arg == "BAD" else arg for arg in COMMANDS[command]]
    code, err = _lmmixup(monkeypatch, capsys, tmp_path, args)
    assert (code, no_models) == (2, [])
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err, err
    assert "Error" not in err  # no Python exception names


def test_the_good_inputs_of_these_tests_pass_the_checks(tmp_path):
    from lmmixup.io.validate import MIXTURE_RECORD, POOL_RECORD, RATED_RECORD, check_file
    from lmmixup.stages.distill import read_distill_inputs

    _good_inputs(tmp_path)
    _write(tmp_path / "test.jsonl", [MIXTURE_ROW])
    check_file(tmp_path / "pool.jsonl", POOL_RECORD)
    check_file(tmp_path / "rated.jsonl", RATED_RECORD)
    check_file(tmp_path / "test.jsonl", MIXTURE_RECORD)
    clusters, members = read_distill_inputs(
        tmp_path / "clusters.jsonl", tmp_path / "pool.jsonl", allow_empty=False
    )
    assert [number for number, _ in clusters] == [1] and sorted(members) == ["a", "b"]


def test_a_missing_input_file_is_named(tmp_path, monkeypatch, capsys, no_models):
    code, err = _lmmixup(monkeypatch, capsys, tmp_path, ["rate", "none.jsonl", "-o", "o.jsonl"])
    assert code == 2 and err.startswith("error: none.jsonl: no such file;")


def test_a_split_with_some_failed_ratings_keeps_them_apart(tmp_path):
    from lmmixup.config import SplitConfig
    from lmmixup.stages.split import split_file

    rows = [_rated_row("a"), _rated_row("b", rating=None, rating_error="judge failed")]
    _write(tmp_path / "rated.jsonl", rows)
    counts = split_file(
        tmp_path / "rated.jsonl", tmp_path / "high.jsonl", tmp_path / "low.jsonl", SplitConfig()
    )
    assert (counts["high"], counts["low"], counts["unrated"]) == (1, 0, 1)


def test_the_real_command_exits_2_with_one_line(tmp_path):
    _write(tmp_path / "pool.jsonl", [_pool_row("a"), _row(POOL_ROW, id="b", source=DROP)])
    done = subprocess.run(
        [sys.executable, "-m", "lmmixup.cli", "rate", "pool.jsonl", "-o", "rated.jsonl"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: pool.jsonl:2: field 'source' missing; a pool record needs id, prompt, "
        "completion and source; run `lmmixup data import` to make one"
    ]
    assert not (tmp_path / "rated.manifest.json").exists()  # refused before the stage began

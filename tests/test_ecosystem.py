"""The Hugging Face ecosystem in and out: `datasets` folders and files in, Hub ids (offline
message), JSONL / Parquet / saved datasets / TRL `messages` out, `lmmixup export` with its
dataset card, `--push-to-hub` against a local stand-in of the Hub API, `--version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import datasets
import pytest
import yaml
from fake_hub_server import FakeHubServer
from test_report import make_run

from lmmixup.cli.app import main
from lmmixup.config import ImportConfig
from lmmixup.errors import LmmixupError
from lmmixup.io import sources
from lmmixup.io.formats import RecordOutput, output_format
from lmmixup.io.hf_datasets import HubSource, LoadedRows, parse_hub_id
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.stages.import_pool import import_pool

LMMIXUP = [sys.executable, "-m", "lmmixup.cli"]
ALPACA = [
    {
        "instruction": f"Explain topic {i}.",
        "input": "" if i % 2 else f"context {i}",
        "output": f"Topic {i} is ...",
    }
    for i in range(6)
]


def _run(*args, cwd, env=None):
    """The CLI in a new process (for what environment variables decide at import)."""
    return subprocess.run(
        [*LMMIXUP, *args], capture_output=True, text=True, check=False, cwd=cwd, env=env
    )


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """The CLI's `main()` in this process, in tmp_path: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def call(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["lmmixup", "-q", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return call


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_version_is_the_installed_packages():
    done = _run("--version", cwd=None)
    assert done.returncode == 0 and done.stdout.strip() == f"lmmixup {version('lmmixup')}"


def test_a_saved_dataset_in_parquet_and_a_saved_dataset_out(tmp_path, cli):
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "alpaca"))
    code, _, err = cli("data", "import", "alpaca", "-o", "pool.parquet")
    assert code == 0, err
    assert (tmp_path / "pool.rejects.jsonl").exists() and not (tmp_path / "pool.jsonl").exists()
    table = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "pool.parquet"), split="train"
    )
    assert table[0]["prompt"] == "Explain topic 0.\n\ncontext 0"
    assert table[1]["completion"] == "Topic 1 is ..." and set(table["source"]) == {"alpaca"}

    out = RecordOutput.of(tmp_path / "pool_ds")
    result = import_pool([str(tmp_path / "alpaca")], out, ImportConfig(holdout_fraction=0.5))
    saved = datasets.load_from_disk(str(tmp_path / "pool_ds"))
    held = datasets.load_from_disk(str(tmp_path / "pool_ds.heldout"))
    assert (result.kept, result.held_out) == (3, 3) == (len(saved), len(held))
    assert sorted([*saved["id"], *held["id"]]) == sorted(table["id"])


def test_a_hub_id_streams_up_to_the_limit_and_keeps_its_licence(tmp_path, monkeypatch):
    """Only `datasets.load_dataset` is replaced: what the importer does with Hub rows is real."""
    calls = []

    def fake_load(source: HubSource, streaming: bool) -> LoadedRows:
        calls.append((source, streaming))
        return LoadedRows(iter(ALPACA), "cc-by-nc-4.0")

    monkeypatch.setattr(sources, "load_hub_rows", fake_load)
    result = import_pool(["tatsu-lab/alpaca"], tmp_path / "pool.jsonl", ImportConfig(limit=2))
    assert calls == [(HubSource("tatsu-lab/alpaca", None, "train"), True)]
    rows = read_records(tmp_path / "pool.jsonl")
    assert [r["source"] for r in rows] == ["tatsu-lab/alpaca"] * 2
    assert result.stopped_at_limit == ["tatsu-lab/alpaca:train"]
    assert result.licenses == {"tatsu-lab/alpaca:train": "cc-by-nc-4.0"}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("tatsu-lab/alpaca", HubSource("tatsu-lab/alpaca", None, "train")),
        (
            "allenai/tulu-v2-sft-mixture:train",
            HubSource("allenai/tulu-v2-sft-mixture", None, "train"),
        ),
        ("openai/gsm8k:main:test[:100]", HubSource("openai/gsm8k", "main", "test[:100]")),
        ("pool.jsonl", None),
        ("a/b:c:d:e", None),
    ],
)
def test_hub_ids(text, parsed):
    assert parse_hub_id(text) == parsed


def test_a_hub_id_offline_is_one_line_and_exit_2(tmp_path, cli):
    # conftest sets HF_HUB_OFFLINE=1; a dataset never published is in no local cache
    code, _, err = cli("data", "import", "lmmixup-tests/never-published", "-o", "pool.jsonl")
    assert code == 2
    assert err.startswith(
        "error: cannot reach the Hugging Face Hub for lmmixup-tests/never-published:train: "
        "HF_HUB_OFFLINE"
    )
    assert "save_to_disk" in err and len(err.strip().splitlines()) == 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith("pool")]


def test_a_missing_file_is_not_taken_for_a_hub_id(cli):
    code, _, err = cli("data", "import", "data/nothere.jsonl", "-o", "pool.jsonl")
    assert code == 2 and "data/nothere.jsonl: no such file or directory" in err


@pytest.mark.parametrize(
    ("output", "fmt", "message"),
    [
        ("pool.jsonl", "parquet", "the name says jsonl but --format says parquet"),
        ("pool", "jsonl", "the name says hf but --format says jsonl"),
        ("pool.csv", None, "not .csv"),
        ("pool.parquet", "arrow", "--format arrow: choose one of jsonl, parquet, hf"),
    ],
)
def test_a_name_and_format_that_disagree_are_refused(output, fmt, message):
    with pytest.raises(LmmixupError, match=message):
        output_format(output, fmt)


def test_a_format_conflict_exits_2_before_any_work(tmp_path, cli):
    write_records(tmp_path / "in.jsonl", [{"prompt": "p", "completion": "c"}])
    code, _, err = cli("data", "import", "in.jsonl", "-o", "pool.jsonl", "--format", "hf")
    assert code == 2 and "--format says hf" in err
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    code, _, err = cli("data", "import", "in.jsonl", "-o", "keep")
    assert code == 2 and "not a saved dataset" in err
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", "keep"]


def _rated(path: Path) -> None:
    rating = {"overall": 9, "score": 5, "rater": "fake", "method": "judge-generate"}
    rows = [
        {"id": f"r{i}", "prompt": f"q {i}", "completion": f"a {i}", "source": "s", "rating": rating}
        for i in range(5)
    ]
    write_records(path, rows)


def test_select_writes_messages_as_a_saved_dataset(tmp_path, cli):
    _rated(tmp_path / "rated.jsonl")
    code, _, err = cli(
        "select", "--baseline", "random", "--pool", "rated.jsonl", "--budget", "3",
        "-o", "train", "--messages",
    )  # fmt: skip
    assert code == 0, err
    saved = datasets.load_from_disk(str(tmp_path / "train"))
    assert len(saved) == 3 and "prompt" not in saved.column_names
    row = saved[0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][0]["content"] == f"q {row['id'][1:]}" and row["origin"] == "pool"
    assert len(read_records(tmp_path / "train.why.jsonl")) == 3


def _finished_run(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "run")
    warning = {"code": "few_distilled", "message": "2 distilled rows", "advice": "distill more"}
    summary = {"stages": {"select": {"counts": {"rows": 6, "budget": 6}}}, "warnings": [warning]}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_export_writes_a_dataset_folder_with_its_card(tmp_path, cli):
    run = _finished_run(tmp_path)
    code, _, err = cli("export", "run", "-o", "out", "--license", "apache-2.0")
    assert code == 0, err
    train = read_records(run / "select" / "train.jsonl")
    saved = datasets.load_from_disk(str(tmp_path / "out"))
    assert (
        list(saved["id"]) == [r["id"] for r in train] and saved[0]["prompt"] == train[0]["prompt"]
    )
    assert saved[0]["member_ids"] == train[0]["member_ids"] and saved[0]["origin"] == "distilled"
    meta, body = _card(tmp_path / "out")
    assert meta["license"] == "apache-2.0" and meta["size_categories"] == ["n<1K"]
    assert "lmmixup" in meta["tags"] and meta["task_categories"] == ["text-generation"]
    assert meta["lmmixup"]["rows"] == 6 and meta["lmmixup"]["stages"]["select"]["rows"] == 6
    assert meta["lmmixup"]["stages"]["import"] == {"kept": 24, "rejected": 3}  # from manifest
    assert meta["lmmixup"]["warnings"] == ["few_distilled"]
    files = meta["configs"][0]["data_files"][0]
    on_hub = datasets.load_dataset("arrow", data_files=str(tmp_path / "out" / files["path"]))
    assert list(on_hub["train"]["id"]) == list(saved["id"])
    for text in ("## Counts per stage", "few_distilled", "`mix-c000000` merges `p0`", "budget: 10"):
        assert text in body


def test_export_messages_parquet_and_jsonl(tmp_path, cli):
    run = _finished_run(tmp_path)
    code, _, err = cli("export", "run", "-o", "train.parquet", "--messages")
    assert code == 0, err
    table = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"))["train"]
    train = read_records(run / "select" / "train.jsonl")
    assert table[0]["messages"] == [
        {"role": "user", "content": train[0]["prompt"]},
        {"role": "assistant", "content": train[0]["completion"]},
    ]
    assert table[0]["member_ids"] == train[0]["member_ids"]
    assert cli("export", "run", "-o", "t.jsonl")[0] == 0
    assert read_records(tmp_path / "t.jsonl") == train


def test_export_of_an_unfinished_run_or_a_file_push_is_refused(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    code, _, err = cli("export", "empty", "-o", "out")
    assert code == 2 and "no finished select stage" in err
    _finished_run(tmp_path)
    code, _, err = cli("export", "run", "-o", "t.parquet", "--push-to-hub", "me/x")
    assert code == 2 and "--push-to-hub uploads a dataset folder" in err
    assert sorted(os.listdir(tmp_path)) == ["empty", "run"]


@pytest.fixture
def online(monkeypatch):
    """huggingface_hub in this process, online, with a token."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return constants


def test_push_to_hub_uploads_the_folder_to_a_hub_stand_in(tmp_path, cli, online, monkeypatch):
    _finished_run(tmp_path)
    with FakeHubServer() as hub:
        monkeypatch.setattr(online, "ENDPOINT", hub.endpoint)
        first = cli("export", "run", "-o", "out", "--push-to-hub", "me/mixup")
        again = cli("export", "run", "-o", "out", "--push-to-hub", "me/mixup")
    assert first[0] == 0, first[2]
    assert again[0] == 0, again[2]  # an existing repo is reused
    uploaded = hub.state.repos[("dataset", "me/mixup")]
    local = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert uploaded == local and "README.md" in uploaded
    assert {r.authorization for r in hub.state.requests} == {"Bearer hf_test_token"}
    assert "uploaded to the Hub dataset me/mixup" in first[1]
    assert hub.state.cards[0]["lmmixup"]["rows"] == 6  # the Hub stand-in read the card's YAML


def test_push_without_a_network_says_so_in_one_line(tmp_path, cli, online, monkeypatch):
    _finished_run(tmp_path)
    monkeypatch.setattr(online, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = cli("export", "run", "-o", "out", "--push-to-hub", "me/x")
    assert code == 2
    assert err.startswith("error: cannot reach the Hugging Face Hub to upload me/x")
    assert len(err.strip().splitlines()) == 1
    assert datasets.load_from_disk(str(tmp_path / "out")).num_rows == 6  # the export is kept

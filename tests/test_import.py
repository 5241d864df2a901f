"""`lmmixup data import`: every format, every kind of bad row, stable ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmmixup.config import ImportConfig
from lmmixup.io.jsonl import read_records
from lmmixup.records import content_id
from lmmixup.stages.import_pool import import_pool

GOOD = {"prompt": "What is the capital of France?", "completion": "Paris is the capital of France."}


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _import(tmp_path: Path, *sources: Path | str, **cfg) -> tuple[list[dict], list[dict]]:
    out = tmp_path / "pool.jsonl"
    result = import_pool([str(s) for s in sources], out, ImportConfig(**cfg))
    return read_records(out), read_records(result.rejects)


def test_every_format_is_normalised(tmp_path):
    rows = {
        "pc": {"id": "a", "prompt": "p1", "completion": "c1"},
        "alpaca": {"instruction": "Translate", "input": "hola", "output": "hello"},
        "sharegpt": {
            "id": "s",
            "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "hello!"},
                {"from": "human", "value": "more"},
                {"from": "gpt", "value": "sure"},
            ],
        },
        "messages": {
            "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
        },
        "qa": {"question": "q?", "answer": "a."},
    }
    path = _write_lines(tmp_path / "mixed.jsonl", [json.dumps(r).encode() for r in rows.values()])
    pool, rejects = _import(tmp_path, path)
    assert rejects == []
    by_prompt = {r["prompt"]: r for r in pool}
    assert by_prompt["p1"]["id"] == "a"
    assert by_prompt["Translate\n\nhola"]["completion"] == "hello"
    assert by_prompt["hi"]["completion"] == "hello!"
    assert by_prompt["hi"]["meta"] == {"system": ["be nice"], "turns": 5}
    assert by_prompt["2+2?"]["completion"] == "4"
    assert by_prompt["q?"]["completion"] == "a."
    assert {r["source"] for r in pool} == {"mixed"}


def test_json_array_csv_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    array = tmp_path / "arr.json"
    array.write_text(
        json.dumps([GOOD, {"prompt": "x", "completion": "y", "source": "s2"}], indent=2)
    )
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('prompt,completion,extra\n"multi\nline",done,7\nshort,row\n')
    parquet = tmp_path / "t.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "pp", "completion": "cc", "task_type": None}]), parquet
    )
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"instruction": "ii", "output": "oo"}]).save_to_disk(str(saved))

    pool, rejects = _import(tmp_path, array, csv_path, parquet, saved)
    prompts = {r["prompt"]: r for r in pool}
    assert set(prompts) == {GOOD["prompt"], "x", "multi\nline", "pp", "ii"}
    assert prompts["x"]["source"] == "s2" and prompts["multi\nline"]["meta"] == {"extra": "7"}
    assert len(rejects) == 1 and rejects[0]["line"] == 4 and "fewer fields" in rejects[0]["reason"]


def test_truncated_json_array_keeps_complete_elements(tmp_path):
    path = tmp_path / "cut.json"
    text = json.dumps([GOOD, {"prompt": "b", "completion": "c"}], indent=1)
    path.write_text(text[: text.rindex('"c"')])
    pool, rejects = _import(tmp_path, path)
    assert [r["prompt"] for r in pool] == [GOOD["prompt"]]
    assert len(rejects) == 1 and "truncated" in rejects[0]["reason"]


BAD_ROWS = {
    "bad JSON": b'{"prompt": "x", "completion": ',
    "not an object": b'["prompt", "completion"]',
    "missing field": b'{"prompt": "only a prompt"}',
    "empty prompt": b'{"prompt": "   ", "completion": "c"}',
    "empty completion": b'{"prompt": "p", "completion": ""}',
    "invalid UTF-8": b'{"prompt": "caf\xe9", "completion": "c"}',
    "huge text": json.dumps({"prompt": "p", "completion": "x" * 2000}).encode(),
    "duplicate id": json.dumps({"id": "dup", "prompt": "p2", "completion": "c2"}).encode(),
    "wrong type": b'{"prompt": 12, "completion": "c"}',
    "wrong id type": b'{"id": [1], "prompt": "p", "completion": "c"}',
    "bad task type": b'{"prompt": "p", "completion": "c", "task_type": "poem"}',
    "bad conversation": b'{"conversations": [{"from": "gpt", "value": "orphan answer"}]}',
}


def test_every_bad_row_is_rejected_with_its_line_and_good_rows_are_kept(tmp_path):
    good = [
        json.dumps({"id": f"g{i}", "prompt": f"p{i}", "completion": f"c{i}"}).encode()
        for i in range(3)
    ]
    first_dup = json.dumps({"id": "dup", "prompt": "p1", "completion": "c1"}).encode()
    lines = [good[0], first_dup, *BAD_ROWS.values(), good[1], b"", good[2]]
    path = _write_lines(tmp_path / "bad.jsonl", lines)
    pool, rejects = _import(tmp_path, path, reject_over_chars=1000)
    assert sorted(r["id"] for r in pool) == ["dup", "g0", "g1", "g2"]
    assert [r["line"] for r in rejects] == list(range(3, 3 + len(BAD_ROWS)))
    assert all(r["file"] == str(path) and r["reason"] and "raw" in r for r in rejects)
    reasons = dict(zip(BAD_ROWS, (r["reason"] for r in rejects), strict=True))
    assert "invalid JSON" in reasons["bad JSON"]
    assert "UTF-8" in reasons["invalid UTF-8"]
    assert "over the limit" in reasons["huge text"]
    assert "duplicate id 'dup'" in reasons["duplicate id"] and ":2" in reasons["duplicate id"]
    assert "must be a string" in reasons["wrong type"]
    assert rejects[list(BAD_ROWS).index("invalid UTF-8")]["raw"].startswith('{"prompt": "caf')


def test_ids_are_stable_and_content_based(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [json.dumps(GOOD).encode()])
    first, _ = _import(tmp_path, path)
    second, _ = _import(tmp_path, path)
    assert first[0]["id"] == second[0]["id"] == content_id(GOOD["prompt"], GOOD["completion"])
    assert content_id("a", "bc") != content_id("ab", "c")


def test_filters_sample_and_limit(tmp_path):
    rows = [{"prompt": "p" * (i + 1), "completion": "c"} for i in range(20)]
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps(r).encode() for r in rows])
    pool, _ = _import(tmp_path, path, min_prompt_chars=5, max_prompt_chars=15)
    assert [len(r["prompt"]) for r in pool] == list(range(5, 16))
    a, _ = _import(tmp_path, path, sample=5, seed=3)
    b, _ = _import(tmp_path, path, sample=5, seed=3)
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 5
    limited, _ = _import(tmp_path, path, limit=4)
    assert len(limited) == 4


def test_match_keeps_rows_on_a_topic_and_a_source_listed_twice_imports_each_row_once(tmp_path):
    rows = [{"prompt": f"Explain topic {i}", "completion": "c" * 5} for i in range(30)]
    rows += [
        {"prompt": f"Explain quantum computing ({i})", "completion": "q" * 5} for i in range(4)
    ]
    path = _write_lines(tmp_path / "r.jsonl", [json.dumps(r).encode() for r in rows])
    sources = [{"path": str(path), "sample": 10}, {"path": str(path), "match": "(?i)QUANTUM"}]
    result = import_pool(sources, tmp_path / "pool.jsonl", ImportConfig(seed=1))
    pool = read_records(tmp_path / "pool.jsonl")
    ids = [r["id"] for r in pool]
    quantum = [r for r in pool if "quantum" in r["prompt"]]
    assert len(ids) == len(set(ids)) and len(quantum) == 4
    sampled_quantum = 10 + 4 - len(pool)
    assert result.repeated == sampled_quantum
    assert result.filtered_by_match == 30 and read_records(result.rejects) == []
    assert result.counts()["repeated_across_sources"] == sampled_quantum


def test_a_bad_match_pattern_is_a_config_error():
    from pydantic import ValidationError

    from lmmixup.config import SourceSpec

    with pytest.raises(ValidationError, match="not a regular expression"):
        SourceSpec(path="x.jsonl", match="(unclosed")


def test_the_same_id_with_other_content_in_another_file_is_rejected(tmp_path):
    a = _write_lines(tmp_path / "a.jsonl", [json.dumps({"id": "x", **GOOD}).encode()])
    other = {"id": "x", "prompt": "Another question here?", "completion": "Another answer."}
    b = _write_lines(tmp_path / "b.jsonl", [json.dumps(other).encode()])
    pool, rejects = _import(tmp_path, a, b)
    assert [r["prompt"] for r in pool] == [GOOD["prompt"]]
    assert len(rejects) == 1 and rejects[0]["reason"].startswith("duplicate id 'x'")
    assert rejects[0]["file"].endswith("b.jsonl") and rejects[0]["line"] == 1


def test_builtin_gsm8k_source_skips_the_evaluation_rows(tmp_path):
    from lmmixup.evalsuite import gsm8k_reserved_rows, gsm8k_rows

    out = tmp_path / "pool.jsonl"
    result = import_pool(["gsm8k"], out, ImportConfig())
    pool = read_records(out)
    reserved = gsm8k_reserved_rows()
    assert result.reserved_for_eval == len(reserved) and result.rejected == 0
    assert len(pool) == 1319 - len(reserved)
    assert all(r["source"] == "gsm8k" and "####" in r["completion"] for r in pool)
    questions = {r["prompt"] for r in pool}
    assert not questions & {row["question"] for row in gsm8k_rows(reserved)}


def test_holdout_is_seeded_disjoint_and_complete(tmp_path):
    path = _write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"prompt": f"question {i}", "completion": f"answer {i}"}).encode()
            for i in range(40)
        ],
    )
    out = tmp_path / "pool.jsonl"
    result = import_pool([str(path)], out, ImportConfig(holdout_fraction=0.25, seed=3))
    pool, held = read_records(out), read_records(result.heldout)
    assert (result.kept, result.held_out) == (
        30,
        10,
    ) and result.heldout.name == "pool.heldout.jsonl"
    assert {r["id"] for r in pool}.isdisjoint(r["id"] for r in held)
    again = import_pool(
        [str(path)], tmp_path / "again.jsonl", ImportConfig(holdout_fraction=0.25, seed=3)
    )
    assert read_records(again.heldout) == held
    capped = import_pool(
        [str(path)], tmp_path / "cap.jsonl", ImportConfig(holdout_fraction=0.5, holdout_max=4)
    )
    assert capped.held_out == 4 and capped.kept == 36


@pytest.mark.slow
def test_builtin_sharegpt_recovers_every_complete_conversation(tmp_path):
    pool, rejects = _import(tmp_path, "sharegpt")
    # 17,671 complete conversations are recoverable; the truncated tail is one more reject.
    assert len(pool) + len(rejects) == 17_672
    assert sum("truncated" in r["reason"] for r in rejects) == 1
    assert len(pool) > 11_000


def test_cli_import_exits_zero_and_prints_counts(tmp_path):
    other = {"prompt": "Name a prime number.", "completion": "Seven is a prime number."}
    path = _write_lines(
        tmp_path / "in.jsonl", [json.dumps(GOOD).encode(), b"{oops", json.dumps(other).encode()]
    )
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "lmmixup.cli", "-q", "data", "import", str(path), "-o", str(out)]
    done = subprocess.run(
        [*cmd, "--holdout-fraction", "0.5"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "kept 1 rows" in done.stdout and "rejected 1 rows" in done.stdout
    assert (
        "held out 1 rows" in done.stdout and len(read_records(tmp_path / "out.heldout.jsonl")) == 1
    )
    assert (tmp_path / "out.rejects.jsonl").exists()


def test_cli_missing_source_is_a_one_line_error(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmmixup.cli",
            "data",
            "import",
            "nope.jsonl",
            "-o",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "nope.jsonl" in done.stderr

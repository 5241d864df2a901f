"""`lmmixup eval downstream`: the shipped offline lm-eval suite on the tiny model end to end,
resume, the held-out task's file and score, the GSM8K row split, and clear errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lmmixup import evalsuite
from lmmixup.cli.app import app
from lmmixup.errors import LmmixupError
from lmmixup.evaluation import downstream
from lmmixup.evaluation.downstream import DownstreamConfig, evaluate_models, model_settings
from lmmixup.io.assets import builtin_path

HELDOUT = [
    {"prompt": "What is two plus two?", "completion": "Two plus two is four."},
    {"prompt": "Name a colour of the sky.", "completion": "The sky is often blue."},
    {"prompt": "Say hello.", "completion": "Hello! How can I help you today?"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def fast_config(tmp_path, **changes) -> DownstreamConfig:
    settings = {
        "heldout": str(write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)),
        "limit": 2,
        "max_gen_toks": 8,
        "dtype": "float32",
        "output_dir": str(tmp_path / "out"),
    }
    return DownstreamConfig(**(settings | changes))


def test_gsm8k_rows_are_disjoint_reserved_and_match_the_file():
    evaluation, shots = set(evalsuite.GSM8K_EVAL_ROWS), set(evalsuite.GSM8K_FEWSHOT_ROWS)
    assert len(evaluation) == 200 and len(shots) == 8 and not evaluation & shots
    reserved = set(evalsuite.gsm8k_reserved_rows())
    assert evaluation | shots <= reserved
    lines = builtin_path("gsm8k").read_text(encoding="utf-8").splitlines()
    assert max(reserved) == len(lines) - 1
    first = evalsuite.gsm8k_rows([evalsuite.GSM8K_EVAL_ROWS[0]])[0]
    assert json.loads(lines[first["row"]])["question"] == first["question"]


def test_multiple_choice_items_are_deterministic_and_honest():
    rows = evalsuite.gsm8k_rows(evalsuite.GSM8K_EVAL_ROWS)
    items = evalsuite.gsm8k_mc_items(rows)
    assert items == evalsuite.gsm8k_mc_items(rows)
    for row, item in zip(rows, items, strict=True):
        assert len(set(item["choices"])) == 4
        assert item["choices"][item["label"]] == evalsuite.final_number(row["answer"])
    labels = [item["label"] for item in items]
    assert all(labels.count(position) > 30 for position in range(4))


def test_eval_texts_cover_questions_answers_and_heldout(tmp_path):
    heldout = write_jsonl(tmp_path / "h.jsonl", HELDOUT)
    texts = evalsuite.eval_texts([*evalsuite.SHIPPED_TASKS, "hellaswag"], heldout)
    assert set(texts) == set(evalsuite.SHIPPED_TASKS)
    assert len(texts[evalsuite.GSM8K_TASK]) == 2 * len(evalsuite.gsm8k_reserved_rows())
    assert HELDOUT[1]["completion"] in texts[evalsuite.HELDOUT_TASK]
    with pytest.raises(LmmixupError, match="held-out file"):
        evalsuite.eval_texts([evalsuite.HELDOUT_TASK])


def test_suite_runs_offline_and_a_rerun_skips_finished_models(tiny_llama, tmp_path, monkeypatch):
    cfg = fast_config(tmp_path)
    results = evaluate_models({"tiny": str(tiny_llama)}, cfg)
    out = tmp_path / "out"
    entry = results["models"]["tiny"]
    assert set(entry["tasks"]) == set(evalsuite.SHIPPED_TASKS)
    primaries = [entry["tasks"][task]["primary"] for task in evalsuite.SHIPPED_TASKS]
    assert all(0 <= value <= 1 for value in primaries)
    assert entry["average"] == pytest.approx(sum(primaries) / 3)
    saved = json.loads((out / "models" / "tiny.json").read_text())
    assert saved["n-samples"]["lmmixup_gsm8k"] == {"original": 200, "effective": 2}
    assert saved["n-shot"]["lmmixup_gsm8k"] == 8
    assert json.loads((out / "results.json").read_text())["models"]["tiny"]["average"] is not None
    table = (out / "results.md").read_text()
    assert "| tiny |" in table and "average" in table
    assert all(task in table for task in evalsuite.SHIPPED_TASKS)

    calls = []
    real = downstream.run_lm_eval
    monkeypatch.setattr(
        downstream, "run_lm_eval", lambda model, *args: calls.append(model) or real(model, *args)
    )
    args = ["eval", "downstream", f"tiny={tiny_llama}", f"copy={tiny_llama}", "-o", str(out)]
    args += ["--heldout", cfg.heldout, "--limit", "2", "--dtype", "float32"]
    args += ["--tasks", ",".join(evalsuite.SHIPPED_TASKS), "--set", "max_gen_toks=8"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert calls == [str(tiny_llama)]  # only the new label ran
    assert "tiny (saved)" in done.output and "copy" in done.output
    again = json.loads((out / "results.json").read_text())
    assert again["models"]["tiny"]["skipped"] and not again["models"]["copy"]["skipped"]
    assert "| copy |" in (out / "results.md").read_text()


def test_cli_help_shows_examples_and_errors_are_one_line(tmp_path):
    command = [sys.executable, "-m", "lmmixup.cli", "eval", "downstream"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0
    assert "lmmixup eval downstream base=" in shown.stdout and "include:" in shown.stdout
    failed = subprocess.run(
        [*command, "m=x", "--tasks", "lmmixup_nope", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().startswith("error: unknown task 'lmmixup_nope'")
    assert len(failed.stderr.strip().splitlines()) == 1


def test_changed_settings_or_heldout_data_are_not_reused(tmp_path):
    cfg = fast_config(tmp_path)
    base = model_settings("bundled:smollm2-135m-instruct", cfg)
    assert base == model_settings("bundled:smollm2-135m-instruct", cfg.model_copy())
    assert base == model_settings(
        "bundled:smollm2-135m-instruct", cfg.model_copy(update={"batch_size": 1})
    )
    assert base != model_settings(
        "bundled:smollm2-135m-instruct", cfg.model_copy(update={"limit": 3})
    )
    write_jsonl(tmp_path / "heldout.jsonl", HELDOUT[:2])
    assert base != model_settings("bundled:smollm2-135m-instruct", cfg)


def _reference_logprob_per_byte(model_dir, records) -> float:
    """Sum of log p(separator + completion | prompt) over all records, per completion byte."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, size = 0.0, 0
    for record in records:
        continuation = "\n" + record["completion"]
        context_ids = tokenizer(record["prompt"])["input_ids"]
        ids = tokenizer(record["prompt"] + continuation)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits.log_softmax(-1)[0]
        total += sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids)))
        size += len(continuation.encode())
    return total / size


def test_heldout_task_scores_the_file_it_is_given(tiny_llama, tmp_path):
    other = [{"prompt": "Count to three.", "completion": "One, two, three."}]
    scores = {}
    for name, records in (("a", HELDOUT), ("b", other)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", records)
        cfg = fast_config(
            tmp_path,
            tasks=[evalsuite.HELDOUT_TASK],
            heldout=str(path),
            limit=None,
            output_dir=str(tmp_path / name),
        )
        result = evaluate_models({"tiny": str(tiny_llama)}, cfg)["models"]["tiny"]
        metrics = result["tasks"][evalsuite.HELDOUT_TASK]["metrics"]
        saved = json.loads((tmp_path / name / "models" / "tiny.json").read_text())
        assert saved["n-samples"][evalsuite.HELDOUT_TASK]["effective"] == len(records)
        per_byte = metrics["logprob_per_byte,none"]
        assert per_byte == pytest.approx(_reference_logprob_per_byte(tiny_llama, records), abs=1e-3)
        assert metrics["byte_likelihood,none"] == pytest.approx(math.exp(per_byte))
        assert metrics["bits_per_byte,none"] == pytest.approx(-per_byte / math.log(2))
        scores[name] = per_byte
    assert scores["a"] != scores["b"]


def test_bad_task_names_and_missing_heldout_give_clear_errors(tmp_path):
    with pytest.raises(LmmixupError, match="unknown task 'lmmixup_gsm8kk'; the shipped tasks"):
        evaluate_models({"m": "x"}, fast_config(tmp_path, tasks=["lmmixup_gsm8kk"]))
    with pytest.raises(LmmixupError, match="needs --heldout FILE"):
        evaluate_models({"m": "x"}, fast_config(tmp_path, heldout=None))
    bad = write_jsonl(tmp_path / "bad.jsonl", [HELDOUT[0], {"prompt": "only a prompt"}])
    with pytest.raises(LmmixupError, match=r"bad.jsonl:2: needs non-empty"):
        evaluate_models({"m": "x"}, fast_config(tmp_path, heldout=str(bad)))
    with pytest.raises(LmmixupError, match="lmmixup_gsm8k has 8 shots"):
        evaluate_models({"m": "x"}, fast_config(tmp_path, num_fewshot=9))


def test_unknown_and_hub_only_lm_eval_tasks_fail_with_a_one_line_reason(tmp_path):
    downstream.quiet_lm_eval()
    manager = downstream.task_manager(fast_config(tmp_path, tasks=["gsm8k"]))
    with pytest.raises(LmmixupError, match="unknown task 'no_such_task_xyz'"):
        downstream.load_tasks(manager, ["no_such_task_xyz"])
    with pytest.raises(LmmixupError, match="include: <the built-in YAML>") as error:
        downstream.load_tasks(manager, ["gsm8k"])
    assert "\n" not in str(error.value)

"""`lmmixup eval distiller`: the tiny model end to end with a fake judge and fake reward parts;
the judge path and the report on crafted replies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lmmixup.backends.base import Generation
from lmmixup.config import DistillConfig
from lmmixup.errors import LmmixupError
from lmmixup.evaluation.distiller import (
    EvalDistillerConfig,
    ModelSpec,
    attach_ratings,
    evaluate_distillers,
    model_results,
    parse_model_spec,
    record_entries,
    results_markdown,
    unique_specs,
)
from lmmixup.io.cache import CallCache
from lmmixup.method.knn_bayes import KnnBayesScorer, ScorerLibrary
from lmmixup.mixture import LexicalEmbedder
from lmmixup.rewards import RewardSettings, RewardStats, build_reward_set, format_score
from lmmixup.runtime.executor import REJECT_KEY
from lmmixup.stages.distill import make_distill_fn
from lmmixup.stages.distill_drafts import UNCLOSED_ANSWER

RECORDS = [
    {
        "id": "t1",
        "task_type": "qa",
        "members": [{"id": "t1.0", "prompt": "capital of france", "completion": "paris?"}],
        "answer": "Q: What is the capital of France?\nA: Paris.",
        "think": None,
    },
    {
        "id": "t2",
        "task_type": "tfq",
        "members": [{"id": "t2.0", "prompt": "2+2=4", "completion": "true"}],
        "answer": "2 + 2 = 4.\nAnswer: True",
        "think": "Add.",
    },
    {
        "id": "t3",
        "task_type": "qa",
        "members": [{"id": "t3.0", "prompt": "boiling water", "completion": "100"}],
        "answer": "Q: At what temperature does water boil at sea level?\nA: 100 degrees Celsius.",
        "think": None,
    },
]
GOOD_QA = (
    "<think>\nMerge.\n</think>\n\n<answer>\nQ: What is the capital of France?\nA: Paris.\n</answer>"
)
BAD_LAYOUT = "<think>\nx\n</think>\n<answer>\nTrue, probably.\n</answer>"


def fake_judge(batch: list[dict]) -> list[dict]:
    """Rates every pair Overall 7 (expected 7.5, score 3), except pairs mentioning 'fail'."""
    rating = {"overall": 7, "expected_overall": 7.5, "score": 3}
    return [
        {**row, "rating": None, "rating_error": "no digits"}
        if "fail" in row["completion"]
        else {**row, "rating": rating}
        for row in batch
    ]


@pytest.fixture()
def rewards():
    embedder = LexicalEmbedder(dim=64)
    vectors = np.random.default_rng(1).normal(size=(10, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    library = ScorerLibrary({"default": KnnBayesScorer.fit(vectors, np.full(10, 5))})
    return build_reward_set(
        RewardSettings(alignment_mode="continuous"), library, embedder, embedder, RewardStats()
    )


def test_model_specs_are_labelled():
    assert parse_model_spec("base=bundled:smollm2-135m-instruct") == ModelSpec(
        "base", "bundled:smollm2-135m-instruct"
    )
    assert parse_model_spec("runs/distiller/sft/final").label == "sft"
    assert parse_model_spec("bundled:smollm2-135m-instruct").label == "smollm2-135m-instruct"
    with pytest.raises(LmmixupError, match="LABEL=MODEL"):
        unique_specs(["a/final", "a/final"])


def test_crafted_replies_are_scored_and_judged(rewards):
    records = [RECORDS[0], RECORDS[1], {**RECORDS[2], "answer": "Q: fail?\nA: fail"}]
    replies = [
        Generation(GOOD_QA, "stop"),
        Generation(BAD_LAYOUT, "stop"),
        # as backends return it: cut before the `</answer>` it stopped on
        Generation(
            GOOD_QA.replace("Paris.", "fail").removesuffix("</answer>"),
            "stop",
            stop_string="</answer>",
        ),
    ]
    entries = record_entries(records, replies, rewards)
    attach_ratings(entries, fake_judge, batch_size=2)
    assert [e["format"]["compliant"] for e in entries] == [True, False, True]
    assert entries[0]["rewards"]["format"] == 1.0 and entries[1]["rewards"]["format"] == 0.5
    assert entries[0]["rewards"]["alignment"] == pytest.approx(1.0, abs=1e-5)  # same answer
    assert entries[0]["rewards"]["quality"] == 1.0  # the one-class library scores 5
    assert entries[1]["pair"] is None and "rating" not in entries[1]
    assert entries[2]["rating"] is None and entries[2]["rating_error"] == "no digits"
    result = model_results(entries, seconds=1.0)
    judged = result["judge"]["all"]
    assert (judged["rated"], judged["no_pair"], judged["failed"]) == (1, 1, 1)
    assert judged["overall"] == 7.5 and judged["score"] == 3
    assert result["judge"]["by_task"]["tfq"]["overall"] is None
    assert result["format"]["compliant"] == pytest.approx(2 / 3, abs=1e-4)
    total = 0.5 * 1.0 + 0.4 * entries[0]["rewards"]["alignment"] + 0.1 * 1.0
    assert entries[0]["rewards"]["total"] == pytest.approx(total)


class ConstantEmbedder:
    """Every text gets the same unit vector (no drift)."""

    def encode(self, texts):
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


class Replying:
    """A generator that gives every prompt the same reply."""

    name = fingerprint = "replying"

    def __init__(self, reply: Generation):
        self.reply = reply

    def generate(self, prompts, params):
        return [self.reply for _ in prompts]


def test_an_answer_left_open_at_eos_is_well_formed_nowhere(rewards):
    """One meaning: eval, distill and the format reward agree on the same replies."""
    open_answer = GOOD_QA.removesuffix("</answer>")
    at_stop = Generation(open_answer, "stop", stop_string="</answer>")
    at_eos = Generation(open_answer, "eos")
    entries = record_entries([RECORDS[0]] * 2, [at_stop, at_eos], rewards)
    assert [e["format"]["compliant"] for e in entries] == [True, False]
    assert [e["format"]["well_formed"] for e in entries] == [True, False]
    assert [e["rewards"]["format"] for e in entries] == [1.0, 0.0]
    assert entries[1]["pair"] is None and entries[1]["output"] == open_answer
    # GRPO scores the completion as the model wrote it
    assert (format_score(GOOD_QA), format_score(open_answer)) == (1.0, 0.0)

    members = {m["id"]: m for m in RECORDS[0]["members"]}
    cluster = {"cluster_id": "c", "member_ids": list(members)}
    kept, rejected = (
        make_distill_fn(Replying(reply), ConstantEmbedder(), DistillConfig(), members)([cluster])[0]
        for reply in (at_stop, at_eos)
    )
    assert REJECT_KEY not in kept and rejected[REJECT_KEY] == UNCLOSED_ANSWER


def test_eval_distiller_on_the_tiny_model(tiny_llama, tmp_path, rewards):
    test = tmp_path / "grpo_test.jsonl"
    test.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    out = tmp_path / "eval"
    cfg = EvalDistillerConfig(max_new_tokens=16)
    models = unique_specs([f"base={tiny_llama}", f"again={tiny_llama}"])
    cache = CallCache(tmp_path / "calls.sqlite")
    results = evaluate_distillers(
        models, test, out, cfg, judge=fake_judge, rewards=rewards, cache=cache
    )
    assert cache.misses == 3 and cache.hits == 3  # the second label reuses the cached replies
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["records"] == 3 and list(saved["models"]) == ["base", "again"]
    base = saved["models"]["base"]
    assert set(base["format"]) == {"well_formed", "task_pattern", "compliant"}
    assert set(base["rewards"]) == {"quality", "alignment", "format", "total"}
    assert base["rewards"]["format"] is not None and base["rewards"]["total"] is not None
    assert base["judge"]["all"]["records"] == 3 and set(base["judge"]["by_task"]) == {"qa", "tfq"}
    lines = (out / "generations" / "base.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["t1", "t2", "t3"]
    table = (out / "results.md").read_text()
    assert "| measure | base | again |" in table
    assert "| judge overall 1-10: qa |" in table and "| reward: total |" in table


def test_markdown_shows_missing_values_as_dashes(rewards):
    entries = record_entries(RECORDS[:1], [Generation("no tags", "length")], rewards)
    result = {"model": "m", "records": 1, **model_results(entries, 0.5)}
    result["rewards"]["quality"] = result["rewards"]["total"] = None
    table = results_markdown({"test": "t.jsonl", "records": 1, "models": {"m": result}})
    assert "| reward: quality | – |" in table
    assert "| judge overall 1-10: all | – |" in table
    assert "| truncated replies | 1 |" in table


def test_eval_cli_reports_a_missing_test_file(tmp_path):
    from lmmixup.cli.commands.evaluate import eval_app

    result = CliRunner().invoke(
        eval_app, ["distiller", "m", "--test", str(tmp_path / "none.jsonl"), "-o", str(tmp_path)]
    )
    assert isinstance(result.exception, LmmixupError)
    assert "none.jsonl" in str(result.exception)


def test_a_spent_judge_request_cap_stops_the_evaluation(tmp_path, monkeypatch):
    from lmmixup.evaluation.distiller import load_judge

    def capped_judge_fn(cfg, cache, stop, run_index, notes=None):
        def judge(batch):
            stop.reason = "request budget spent: max_requests=1 reached"
            return [{**row, "rating": None, "rating_error": "not sent"} for row in batch]

        return judge, None

    monkeypatch.setattr("lmmixup.stages.judge.load_judge_fn", capped_judge_fn)
    judge = load_judge(EvalDistillerConfig(), CallCache(tmp_path / "calls.sqlite"))
    with pytest.raises(LmmixupError, match="max_requests=1 reached; .*re-run"):
        judge([{"id": "a", "prompt": "p", "completion": "c"}])

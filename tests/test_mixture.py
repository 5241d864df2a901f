"""MIXTURE construction: task derivation, clusters, cross-topic merges, splits, card, CLI."""

from __future__ import annotations

import json
import random
import re
import zlib
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lmmixup.backends.base import Generation
from lmmixup.cli.commands.mixture import mixture_app
from lmmixup.config import DistillConfig, validate
from lmmixup.errors import ConfigError
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.method.prompt import build_messages, prompt_messages, target_text
from lmmixup.method.reply import is_well_formed, parse_output
from lmmixup.method.tasks import matches_task_pattern, task_parts
from lmmixup.mixture import SPLITS, MixtureConfig, build_mixture
from lmmixup.mixture.degrade import LLM_OPERATOR, OPERATORS
from lmmixup.mixture.plans import make_plans
from lmmixup.mixture.seeds import Seed, to_seed
from lmmixup.mixture.splits import split_labels
from lmmixup.mixture.targets import distractors, mcq_target, tfq_target

NAMES = ["Tom", "Ana", "Lee", "Mia", "Sam", "Eva", "Bob", "Zoe"]
THINGS = ["apples", "books", "stamps", "shells", "coins", "cards"]
TOPICS = {
    "volcano": "geology",
    "glacier": "geology",
    "violin": "music",
    "piano": "music",
    "comet": "astronomy",
    "nebula": "astronomy",
}


def _worked_row(i: int) -> dict:
    """A GSM8K-style row: question and a worked solution ending in `#### N`."""
    name, thing = NAMES[i % len(NAMES)], THINGS[i % len(THINGS)]
    a, b = 3 + i % 17, 2 + i % 11
    question = f"{name} has {a} {thing} and buys {b} more. How many {thing} does {name} have now?"
    answer = f"{name} starts with {a} {thing}.\n{name} has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} {thing}.\n#### {a + b}"
    return {"question": question, "answer": answer}


def _prose_row(i: int) -> dict:
    """A prose row about a topic; every other one carries a category."""
    topic = list(TOPICS)[i % len(TOPICS)]
    completion = (
        f"A {topic} is a subject people study for years, variant {i}. "
        f"Experts describe the {topic} in many books and lectures. "
        f"Learning about the {topic} takes patience and careful reading."
    )
    row = {"prompt": f"Tell me about the {topic}, please (note {i}).", "completion": completion}
    if i % 2 == 0:
        row["category"] = TOPICS[topic]
    return row


FINE = "A fine and complete answer to the question."


def _bad_rows() -> list[dict]:
    """Rows the seed filters drop: code, unfinished, non-Latin, low and failed ratings."""
    return [
        {"prompt": "Write code to add numbers", "completion": "```python\nprint(1 + 2)\n```"},
        {"prompt": "Describe the sea at dawn", "completion": "The sea at dawn is quiet and"},
        {"prompt": "Translate hello please", "completion": "こんにちは、世界。元気ですか。" * 3},
        {"prompt": "Rated low question", "completion": FINE, "rating": {"score": 2}},
        {"prompt": "Failed rating question", "completion": FINE, "rating": None},
    ]


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory) -> Path:
    rows = [_worked_row(i) for i in range(70)] + [_prose_row(i) for i in range(40)]
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    write_records(path, rows + _bad_rows())
    return path


class FakeEmbedder:
    """Deterministic unit vectors of hashed words, standing in for a sentence embedder."""

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % 64] += 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _cfg(seed_file: Path, **changes) -> MixtureConfig:
    base = {"seeds": [str(seed_file)], "cross_topic_fraction": 0.2, "cross_topic_pool": 3.0}
    return MixtureConfig.model_validate(base | changes)


@pytest.fixture(scope="module")
def built(seed_file, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mixture")
    card = build_mixture(_cfg(seed_file), out, embedder=FakeEmbedder())
    return out, card


def _records(out: Path) -> list[dict]:
    return [r for split in SPLITS for r in read_records(out / f"{split}.jsonl")]


# ---------------------------------------------------------------------------- task derivation


def _gsm8k_seed(i: int) -> Seed:
    row = _worked_row(i)
    record = {"id": f"g{i}", "prompt": row["question"], "completion": row["answer"]}
    return to_seed(record, MixtureConfig())


def test_seed_parses_worked_solutions():
    seed = _gsm8k_seed(0)
    assert seed.final == "5" and "<<" not in seed.steps and seed.steps.endswith("5 apples.")


@pytest.mark.parametrize("i", range(30))
def test_mcq_has_the_answer_exactly_once(i):
    seed = _gsm8k_seed(i)
    target = mcq_target(seed, random.Random(i), cot=True)
    assert matches_task_pattern(target.answer, "mcq")
    options = re.findall(r"^([A-D])\) (.+)$", target.answer, re.MULTILINE)
    assert [letter for letter, _ in options] == list("ABCD")
    assert [value for _, value in options].count(seed.final) == 1
    letter = task_parts(target.answer, "mcq")["completion"]
    assert dict(options)[letter] == seed.final
    assert target.think.startswith(seed.steps) and f"option {letter}" in target.think


def _real_gsm8k_seeds(count: int) -> list[Seed]:
    """The first rows of the bundled GSM8K test set as seeds (skips when it is not installed)."""
    from lmmixup.errors import LmmixupError
    from lmmixup.io.sources import iter_source
    from lmmixup.records import normalise_row

    try:
        _, lines = iter_source("gsm8k")
    except LmmixupError as exc:
        pytest.skip(str(exc))
    rows = [normalise_row(line.value, default_source="gsm8k") for line in islice(lines, count)]
    return [to_seed(row, MixtureConfig()) for row in rows]


def test_real_gsm8k_rows_make_valid_mcq_and_tfq():
    seeds = _real_gsm8k_seeds(100)
    rng = random.Random(0)
    for n, seed in enumerate(seeds):
        mcq = mcq_target(seed, rng, cot=True)
        tfq = tfq_target(seed, rng, n % 2 == 0, cot=True)
        assert matches_task_pattern(mcq.answer, "mcq") and matches_task_pattern(tfq.answer, "tfq")
        options = re.findall(r"^[A-D]\) (.+)$", mcq.answer, re.MULTILINE)
        assert len(options) == 4 and options.count(seed.final) == 1, seed.id
        assert "<<" not in seed.steps and "####" not in seed.steps


def test_tfq_states_the_right_or_a_wrong_answer():
    seed = _gsm8k_seed(4)
    true = tfq_target(seed, random.Random(0), True, cot=True)
    false = tfq_target(seed, random.Random(0), False, cot=False)
    claim = "Statement: The answer to this problem is"
    assert true.answer == f"{claim} {seed.final}: {seed.prompt}\nAnswer: True"
    assert false.answer.startswith(claim) and false.answer.endswith(f"{seed.prompt}\nAnswer: False")
    assert f"is {seed.final}:" not in false.answer
    assert matches_task_pattern(true.answer, "tfq") and matches_task_pattern(false.answer, "tfq")
    assert false.think is None and "statement is true" in true.think


@pytest.mark.parametrize("final", ["18", "0", "1", "250", "-4", "0.5", "2.25"])
def test_distractors_are_distinct_near_and_wrong(final):
    options = distractors(final, random.Random(1))
    assert len(set(options)) == 3 and final not in options
    if "." not in final:
        assert all("." not in option for option in options)
    if not final.startswith("-"):
        assert all(not option.startswith("-") for option in options)


def test_tfq_labels_are_balanced():
    seeds = [_gsm8k_seed(i) for i in range(200)]
    cfg = MixtureConfig(task_weights={"tfq": 1.0}, cross_topic_fraction=0)
    plans, _ = make_plans(seeds, cfg, embedder=None)
    labels = Counter(plan.answer.rsplit("Answer: ", 1)[1] for plan in plans)
    assert len(plans) == 200 and abs(labels["True"] - labels["False"]) <= 20


# ---------------------------------------------------------------------------- the build


def test_every_answer_follows_its_task_layout(built):
    out, card = built
    records = _records(out)
    assert {r["task_type"] for r in records} == {"qa", "mcq", "tfq", "cs", "paragraph"}
    for record in records:
        assert matches_task_pattern(record["answer"], record["task_type"]), record["id"]
        parsed = parse_output(target_text(record))
        assert parsed.answer == record["answer"].strip()


def test_record_shape_and_cluster_sizes(built):
    out, _ = built
    cfg = MixtureConfig()
    for record in _records(out):
        assert list(record) == [
            "id",
            "task_type",
            "members",
            "answer",
            "think",
            "target_ids",
            "operators",
            "cross_topic",
            "split",
        ]
        assert cfg.min_size <= len(record["members"]) <= cfg.max_size
        assert all(set(m) == {"id", "prompt", "completion"} for m in record["members"])
        assert len({m["id"] for m in record["members"]}) == len(record["members"])
        assert record["operators"] and set(record["operators"]) <= set(OPERATORS)


def test_every_member_degrades_the_target_completion(built):
    out, _ = built
    for record in _records(out):
        if record["task_type"] in ("paragraph", "cs"):
            text = task_parts(record["answer"], record["task_type"]).popitem()[1]
            assert all(m["completion"] != text for m in record["members"])


def test_cross_topic_records_merge_two_targets(built):
    out, card = built
    merged = [r for r in _records(out) if r["cross_topic"]]
    assert merged and card["cross_topic"] == len(merged)
    for record in merged:
        assert record["task_type"] == "qa" and len(record["target_ids"]) == 2
        parts = task_parts(record["answer"], "qa")
        assert parts["prompt"].startswith("1. ") and "\n2. " in parts["prompt"]
    singles = [r for r in _records(out) if not r["cross_topic"]]
    assert all(len(r["target_ids"]) == 1 for r in singles)


def test_splits_are_30_63_7_and_disjoint_by_target(built):
    out, card = built
    records = _records(out)
    n = len(records)
    counts = Counter(r["split"] for r in records)
    for split, share in MixtureConfig().split_fractions().items():
        assert abs(counts[split] - share * n) <= 1, (split, counts)
    owners: dict[str, str] = {}
    for record in records:
        for target in record["target_ids"]:
            assert owners.setdefault(target, record["split"]) == record["split"]
    assert len(owners) == sum(len(r["target_ids"]) for r in records)
    assert card["splits"] == dict(counts)


def test_split_labels_are_stratified_by_task_type():
    tasks = ["qa"] * 50 + ["mcq"] * 30 + ["paragraph"] * 20
    labels = split_labels(tasks, MixtureConfig().split_fractions(), seed=3)
    for task, total in Counter(tasks).items():
        sft = sum(1 for t, s in zip(tasks, labels, strict=True) if t == task and s == "sft")
        assert abs(sft - 0.3 * total) <= 1.5


def test_seed_filters_and_card(built):
    out, card = built
    assert card["seeds"]["dropped"] == {
        "code": 1,
        "low_rating": 1,
        "non_latin": 1,
        "unfinished": 1,
        "unrated": 1,
    }
    seeds = card["seeds"]
    assert seeds["in_records"] == sum(len(r["target_ids"]) for r in _records(out))
    assert seeds["usable"] == seeds["in_records"] + sum(seeds["not_used"].values())
    assert sum(card["cluster_sizes"].values()) == card["records"]
    assert card["llm_degradations"] is None and set(card["operator_uses"]) <= set(OPERATORS)
    assert json.loads((out / "card.json").read_text()) == card
    assert "| sft |" in (out / "card.md").read_text()


def test_build_is_byte_identical_for_a_seed(seed_file, built, tmp_path):
    out, _ = built
    build_mixture(_cfg(seed_file), tmp_path, embedder=FakeEmbedder())
    for name in [f"{split}.jsonl" for split in SPLITS] + ["card.json", "card.md"]:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_another_seed_gives_another_build(seed_file, built, tmp_path):
    out, _ = built
    build_mixture(_cfg(seed_file, seed=1), tmp_path, embedder=FakeEmbedder())
    assert (tmp_path / "sft.jsonl").read_bytes() != (out / "sft.jsonl").read_bytes()


def test_max_examples_and_quotas(seed_file, tmp_path):
    cfg = _cfg(seed_file, max_examples=12, task_quotas={"mcq": 0, "tfq": 2})
    card = build_mixture(cfg, tmp_path, embedder=FakeEmbedder())
    assert card["records"] <= 12 and "mcq" not in card["task_types"]
    seeds = card["seeds"]
    assert seeds["not_used"]["over_max_examples"] > 0
    assert seeds["usable"] == seeds["in_records"] + sum(seeds["not_used"].values())
    assert card["task_types"].get("tfq", 0) <= 2


def test_without_cot_the_solution_is_in_the_answer(seed_file, tmp_path):
    cfg = _cfg(seed_file, cot=False, cross_topic_fraction=0, task_weights={"qa": 1})
    build_mixture(cfg, tmp_path)
    records = _records(tmp_path)
    assert records and all(r["think"] is None for r in records)
    worked = [r for r in records if "The answer is" in r["answer"]]
    assert worked and all("starts with" in r["answer"] for r in worked)


# ---------------------------------------------------------------------------- model degradations


class FakeDegrader:
    """Answers a third of the prompts well, a third with an error, a third with junk."""

    name = "fake-degrader"
    fingerprint = "fake-degrader"

    def __init__(self):
        self.calls = 0
        self.params = None

    def generate(self, prompts, params):
        self.params = params
        replies = []
        for _ in prompts:
            self.calls += 1
            kind = self.calls % 3
            if kind == 0:
                replies.append(Generation("", "error", error="boom"))
            elif kind == 1:
                replies.append(Generation("Sorry, no.", "stop"))
            else:
                replies.append(
                    Generation(f"Q: vague question {self.calls}\nA: some answer", "stop")
                )
        return replies


def test_model_degradations_are_counted_and_fall_back(seed_file, tmp_path):
    cfg = _cfg(
        seed_file, llm_fraction=1.0, max_examples=15, cross_topic_fraction=0, llm_prefix="Q:"
    )
    degrader = FakeDegrader()
    card = build_mixture(cfg, tmp_path, generator=degrader)
    assert degrader.params.assistant_prefix == "Q:"
    llm = card["llm_degradations"]
    members = sum(size * n for size, n in ((int(k), v) for k, v in card["cluster_sizes"].items()))
    assert llm["requested"] == members
    assert set(llm["failed"]) == {"generation_error", "unparsable"}
    assert llm["written"] + llm["fell_back_to_rules"] == llm["requested"]
    assert card["operator_uses"][LLM_OPERATOR] == llm["written"]
    records = _records(tmp_path)
    assert all(len(r["members"]) >= 2 for r in records)
    assert any(LLM_OPERATOR in r["operators"] and len(r["operators"]) > 1 for r in records)


# ---------------------------------------------------------------------------- record API


def test_target_text_and_prompt_messages():
    record = {
        "task_type": "qa",
        "members": [{"id": "m0", "prompt": "q?", "completion": "a"}] * 2,
        "answer": "Q: q?\nA: a",
        "think": "reason",
    }
    assert target_text(record) == "<think>\nreason\n</think>\n\n<answer>\nQ: q?\nA: a\n</answer>"
    bare = target_text(record | {"think": None})
    assert bare.startswith("<think>\nThe ") and bare.endswith("<answer>\nQ: q?\nA: a\n</answer>")
    assert is_well_formed(bare)
    assert target_text(record | {"think": "  "}) == bare
    expected = build_messages(record["members"], "qa", DistillConfig())
    assert prompt_messages(record) == expected


def test_config_rejects_unknown_operators_and_bad_sizes():
    with pytest.raises(ConfigError, match="operators"):
        validate(MixtureConfig, {"operators": ["typos", "shout"]})
    with pytest.raises(ConfigError, match="min_size"):
        validate(MixtureConfig, {"min_size": 9, "max_size": 4})


# ---------------------------------------------------------------------------- CLI


def test_cli_builds_and_reports(seed_file, tmp_path):
    result = CliRunner().invoke(
        mixture_app,
        ["build", str(seed_file), "-o", str(tmp_path), "--no-embed", "--max-examples", "10"],
    )
    assert result.exit_code == 0, result.output
    assert "records" in result.output and "card.md" in result.output
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["config"]["embedder"] == "lexical" and card["records"] <= 10


def test_cli_help_has_examples():
    result = CliRunner().invoke(mixture_app, ["build", "--help"])
    assert result.exit_code == 0 and "lmmixup mixture build" in result.output

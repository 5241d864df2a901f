"""GRPO rewards on crafted completions: format, alignment, quality, mixup, stats, the library."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmixup.errors import LmmixupError
from lmmixup.method.knn_bayes import KnnBayesScorer, ScorerLibrary, load_task_scorers
from lmmixup.records import TASK_TYPES
from lmmixup.rewards import (
    LIBRARY_ENV,
    RewardError,
    RewardStats,
    build_library,
    format_reward,
    library_groups,
    make_alignment_reward,
    make_format_reward,
    make_mixup_reward,
    make_quality_reward,
    quality_reward,
)

QA_ANSWER = "Q: What is the boiling point of water at sea level?\nA: 100 degrees Celsius."
PERFECT = f"<think>\nKeep the fact.\n</think>\n\n<answer>\n{QA_ANSWER}\n</answer>\n"
COPY = "What is the boiling point of water? It boils at 100 C."


class FakeEmbedder:
    """Equal texts get equal unit vectors (seeded by the text's hash); counts encode calls."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = [self.vector(text) for text in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        vector = np.random.default_rng(seed).normal(size=self.dim)
        return vector / np.linalg.norm(vector)


class BrokenEmbedder:
    def __init__(self, result=None):
        self.result = result

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.result is None:
            raise OSError("embedding server unreachable")
        return self.result


def _scorer(label: int, dim: int = 16) -> KnnBayesScorer:
    """A scorer whose library holds only one class, so every text scores E = label."""
    vectors = np.random.default_rng(label).normal(size=(20, dim))
    return KnnBayesScorer.fit(vectors, np.full(20, label))


@pytest.fixture(scope="module")
def library() -> ScorerLibrary:
    return ScorerLibrary({"qa": _scorer(5), "tfq": _scorer(3), "default": _scorer(0)})


@pytest.fixture()
def rewards(library):
    """Fresh stats, a counting fake embedder, and the four rewards built on them."""
    stats, embedder = RewardStats(), FakeEmbedder()
    quality = make_quality_reward(library, embedder, stats=stats)
    alignment = make_alignment_reward(embedder, stats=stats)
    fmt = make_format_reward(stats)
    mixup = make_mixup_reward(quality, alignment, fmt, stats=stats)
    return {
        "stats": stats,
        "embedder": embedder,
        "quality": quality,
        "alignment": alignment,
        "format": fmt,
        "mixup": mixup,
    }


def _chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- format ---------------------------------------------------------------------------------

MCQ_ANSWER = "Q: Which is a mammal?\nA) trout\nB) whale\nC) shark\nD) eel\nAnswer: B"


@pytest.mark.parametrize(
    ("completion", "task_type", "expected"),
    [
        (PERFECT, "qa", 1.0),
        (COPY, "qa", 0.0),
        ("<think>x</think><answer></answer>", "qa", 0.5),
        ("<think>x</think><answer>   </answer>", "paragraph", 0.5),
        ("<think></think><answer></answer>", "qa", 0.5),
        (f"Sure! <think>x</think><answer>{QA_ANSWER}</answer>", "qa", 0.5),
        (f"<think>x</think><answer>{QA_ANSWER}</answer> trailing", "qa", 0.5),
        (f"<think>x</think><answer>{QA_ANSWER}</answer><answer>more</answer>", "qa", 0.5),
        (f"<think>x</think><answer>no layout</answer><answer>{QA_ANSWER}</answer>", "qa", 0.0),
        (f"<answer>{QA_ANSWER}</answer>", "qa", 0.5),
        (f"<think>x</think><answer>{QA_ANSWER}", "qa", 0.0),
        (f"<think>x</think><answer>{QA_ANSWER}</answer>", "mcq", 0.5),
        (f"<think>x</think><answer>{MCQ_ANSWER}</answer>", "mcq", 1.0),
        ("<think>x</think><answer>Any plain paragraph.</answer>", "paragraph", 1.0),
        ("<think>x</think>\n<answer>Water boils.\nAnswer: True</answer>", "tfq", 1.0),
        ("<think>x</think><answer>C: birds\nS: Most birds can fly.</answer>", "cs", 1.0),
    ],
)
def test_format_reward_on_crafted_completions(completion, task_type, expected):
    assert format_reward([completion], task_type=[task_type]) == [expected]


def test_format_reward_defaults_to_qa_and_rejects_unknown_task_types(rewards):
    assert format_reward([PERFECT, PERFECT], task_type=[None, "qa"]) == [1.0, 1.0]
    assert format_reward([PERFECT]) == [1.0]
    with pytest.raises(RewardError, match="unknown task type 'poem'"):
        rewards["format"]([COPY], task_type=["poem"])
    assert rewards["stats"].component("format").failures == 1


# --- the four rewards together ----------------------------------------------------------------


def _all_rewards(rewards, completions, **columns):
    names = ("format", "alignment", "quality", "mixup")
    return {name: rewards[name](completions, **columns) for name in names}


def test_perfect_answer_scores_full_marks(rewards):
    got = _all_rewards(rewards, [PERFECT], task_type=["qa"], reference=[QA_ANSWER])
    assert got["format"] == [1.0]
    assert got["alignment"] == [1.0]
    assert got["quality"] == [1.0]  # the qa library holds only score-5 items
    assert got["mixup"] == pytest.approx([1.0])


def test_continuous_modes(library):
    embedder = FakeEmbedder()
    answer = f"<think>x</think><answer>{QA_ANSWER}</answer>"
    cosine = float(embedder.vector(QA_ANSWER) @ embedder.vector("another text"))
    alignment = make_alignment_reward(embedder, mode="continuous", stats=RewardStats())
    assert alignment([answer, answer], reference=[QA_ANSWER, "another text"]) == pytest.approx(
        [1.0, min(1.0, max(0.0, cosine))]
    )
    quality = make_quality_reward(library, embedder, mode="continuous", stats=RewardStats())
    assert quality([answer] * 3, task_type=["qa", "tfq", "mcq"]) == pytest.approx([1.0, 0.6, 0.0])


def test_quality_uses_the_task_scorer_and_the_band(rewards):
    answer = f"<think>x</think><answer>{QA_ANSWER}</answer>"
    got = rewards["quality"]([answer] * 4, task_type=["qa", "tfq", "mcq", None])
    assert got == [1.0, 0.3, 0.0, 1.0]  # mcq has no scorer: "default" (score 0); None = qa


@pytest.mark.parametrize(
    "completion",
    [COPY, "<think>x</think><answer></answer>", "<think></think><answer> \n </answer>"],
)
def test_no_usable_answer_gets_zero_without_embedding(rewards, completion):
    got = _all_rewards(rewards, [completion], task_type=["qa"], reference=[QA_ANSWER])
    assert got["alignment"] == got["quality"] == [0.0]
    assert rewards["embedder"].calls == []


def test_chat_messages_score_like_strings(rewards):
    texts = [PERFECT, COPY, f"Sure! <think>x</think><answer>{QA_ANSWER}</answer>"]
    chats = [_chat(text) for text in texts]
    chats[1] = [
        {"role": "assistant", "content": "<think>x</think><answer>draft</answer>"},
        {"role": "tool", "content": "result"},
        {"role": "assistant", "content": COPY},
    ]
    columns = {"task_type": ["qa"] * 3, "reference": [QA_ANSWER, "r", "r"]}
    assert _all_rewards(rewards, chats, **columns) == _all_rewards(rewards, texts, **columns)
    parts = [{"role": "assistant", "content": [{"type": "text", "text": PERFECT}]}]
    assert rewards["format"]([parts, [{"role": "user", "content": PERFECT}]]) == [1.0, 0.0]


def test_one_encode_call_per_batch(rewards):
    completions = [PERFECT, COPY, PERFECT, "<think>x</think><answer>Q: a A: b</answer>"]
    columns = {"task_type": ["qa", "qa", "mcq", "qa"], "reference": ["r0", "r1", "r2", "r3"]}
    rewards["alignment"](completions, prompts=["p"] * 4, trainer_state=None, **columns)
    (texts,) = rewards["embedder"].calls
    assert texts == [QA_ANSWER, "Q: a A: b", "r0", "r2", "r3"]  # each distinct text once
    rewards["embedder"].calls.clear()
    rewards["quality"](completions, completion_ids=[[1]] * 4, **columns)
    assert len(rewards["embedder"].calls) == 1
    rewards["embedder"].calls.clear()
    rewards["mixup"](completions, **columns)
    assert len(rewards["embedder"].calls) == 2  # one for quality, one for alignment
    calls = {name: stats.calls for name, stats in rewards["stats"].components.items()}
    assert calls == {"alignment": 2, "quality": 2, "mixup": 1, "format": 1}


# --- failures and statistics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "embedder",
    [BrokenEmbedder(), BrokenEmbedder(np.full((2, 4), np.nan)), BrokenEmbedder(np.ones((1, 4)))],
)
def test_embedder_failure_is_counted_logged_and_raised(embedder, caplog):
    stats = RewardStats()
    alignment = make_alignment_reward(embedder, stats=stats)
    fmt = make_format_reward(stats)
    mixup = make_mixup_reward(fmt, alignment, fmt, stats=stats)
    with caplog.at_level(logging.ERROR, "lmmixup.rewards"), pytest.raises(RewardError):
        mixup([PERFECT], reference=["a different text"])
    assert stats.component("alignment").failures == 1
    assert stats.component("mixup").failures == 1
    assert stats.component("mixup").calls == 1
    assert len(caplog.records) == 1 and "alignment reward failed" in caplog.text
    # a batch without answers needs no embedding, so it still gets its defined reward
    assert alignment([COPY], reference=["r"]) == [0.0]


def test_embedder_mismatch_is_warned(library, caplog):
    embedder = FakeEmbedder()
    embedder.name = "other-model"
    named = ScorerLibrary(
        {"default": KnnBayesScorer.fit(np.eye(16)[:4], [0, 1, 2, 3], embedder="mini")}
    )
    with caplog.at_level(logging.WARNING, "lmmixup.rewards"):
        make_quality_reward(named, embedder, stats=RewardStats())
    assert "built with embedder 'mini', scoring with 'other-model'" in caplog.text


def test_missing_reference_column_is_a_failure(rewards):
    with pytest.raises(RewardError, match="'reference' column"):
        rewards["alignment"]([PERFECT], task_type=["qa"])
    with pytest.raises(RewardError, match="rows \\[1\\]"):
        rewards["alignment"]([PERFECT, PERFECT], reference=["r", None])
    with pytest.raises(RewardError, match="2 values for 1 completions"):
        rewards["alignment"]([PERFECT], reference=["r", "s"])
    assert rewards["stats"].component("alignment").failures == 3


def test_default_quality_reward_needs_a_library(monkeypatch):
    monkeypatch.delenv(LIBRARY_ENV, raising=False)
    with pytest.raises(LmmixupError, match="lmmixup rewards build-library"):
        quality_reward([PERFECT])


def test_stats_record_values_time_and_log_metric(rewards):
    logged = []
    log_metric = lambda name, value: logged.append(name)  # noqa: E731
    rewards["format"]([PERFECT, COPY, PERFECT, COPY], task_type=["qa"] * 4, log_metric=log_metric)
    rewards["format"]([PERFECT], log_metric=log_metric)
    stats = rewards["stats"].component("format")
    assert (stats.calls, stats.items, stats.failures) == (2, 5, 0)
    assert (stats.last_mean, stats.last_std) == (1.0, 0.0)
    assert stats.mean == pytest.approx(0.6) and stats.std == pytest.approx(np.std([1, 0, 1, 0, 1]))
    assert stats.seconds >= stats.last_seconds > 0
    assert logged == ["reward_seconds/format"] * 2
    metrics = rewards["stats"].metrics()
    assert metrics["rewards/format/items"] == 5 and "rewards/format/last_seconds" in metrics


def test_factories_check_their_settings(library):
    embedder = FakeEmbedder()
    with pytest.raises(ValueError, match="alignment mode"):
        make_alignment_reward(embedder, mode="soft")
    with pytest.raises(ValueError, match="quality mode"):
        make_quality_reward(library, embedder, mode="exact")
    with pytest.raises(ValueError, match="weights"):
        make_mixup_reward(format_reward, format_reward, format_reward, weights=(0.5, -0.1, 0.6))


# --- properties ---------------------------------------------------------------------------

_PIECES = ["<think>", "</think>", "<answer>", "</answer>", "Q:", "A:", "A)", "B)", "C)", "D)"]
_PIECES += ["Answer:", "True", "C:", "S:", "\n", " "]
_texts = st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=12).map("".join)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_texts, min_size=1, max_size=4), data=st.data())
def test_rewards_never_crash_and_stay_in_unit_interval(library, texts, data):
    kinds = data.draw(
        st.lists(st.sampled_from(TASK_TYPES), min_size=len(texts), max_size=len(texts))
    )
    embedder, stats = FakeEmbedder(), RewardStats()
    mixup = make_mixup_reward(
        make_quality_reward(library, embedder, mode="continuous", stats=stats),
        make_alignment_reward(embedder, mode="continuous", stats=stats),
        make_format_reward(stats),
        stats=stats,
    )
    values = mixup(texts, task_type=kinds, reference=texts)
    assert all(0.0 <= value <= 1.0 for value in values)
    for name in ("format", "alignment", "quality"):
        assert 0.0 <= stats.component(name).mean <= 1.0


@settings(max_examples=200, deadline=None)
@given(text=st.text(), task_type=st.sampled_from(TASK_TYPES))
def test_format_reward_takes_any_string(text, task_type):
    assert format_reward([text], task_type=[task_type])[0] in (0.0, 0.5, 1.0)


# --- the library ----------------------------------------------------------------------------


def test_library_groups_fold_small_task_types():
    kinds = ["qa"] * 3 + ["mcq"] * 2 + [None, "default"]
    assert library_groups(kinds, by_task=True, min_samples=3) == {
        "default": list(range(7)),
        "qa": [0, 1, 2],
    }
    assert library_groups(kinds, by_task=False, min_samples=1) == {"default": list(range(7))}
    with pytest.raises(LmmixupError, match="cannot name a scorer folder"):
        library_groups(["../x"], by_task=True, min_samples=1)


def test_build_library_embeds_once():
    embedder = FakeEmbedder()
    records = [
        {"prompt": f"p{i}", "completion": "c", "task_type": "qa", "rating": {"score": i % 6}}
        for i in range(6)
    ]
    library = build_library(records, embedder, min_task_samples=6)
    assert sorted(library.scorers) == ["default", "qa"] and len(embedder.calls) == 1
    with pytest.raises(LmmixupError, match="at least 2"):
        build_library(records[:1], embedder)


def _rated_file(path):
    topics = ["rivers", "planets", "bread", "chess", "volcanoes", "violins", "bees", "tides"]
    rows = []
    for i in range(40):
        topic = topics[i % len(topics)]
        rows.append(
            {
                "id": f"r{i}",
                "prompt": f"Tell me about {topic} ({i}).",
                "completion": f"A short note on {topic}.",
                "source": "notes",
                "task_type": "qa" if i < 25 else "mcq",
                "rating": {"score": i % 6},
            }
        )
    failed = {"id": "failed", "prompt": "p", "completion": "c", "source": "notes"}
    rows.append({**failed, "rating": None, "rating_error": "judge failed"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.slow
def test_build_library_command_with_minilm(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lmmixup.cli.commands.rewards import rewards_app
    from lmmixup.rewards import alignment_reward, mixup_reward

    rated, out = tmp_path / "rated.jsonl", tmp_path / "lib"
    _rated_file(rated)
    runner = CliRunner()
    done = runner.invoke(rewards_app, ["build-library", str(rated), "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert "40 rated records" in done.output and "1 without a rating" in done.output
    assert "qa: 25 samples" in done.output and "default: 40 samples" in done.output
    library = load_task_scorers(out)
    assert sorted(library.scorers) == ["default", "qa"]
    assert library.for_task("qa").embedder == "bundled:minilm"

    again = runner.invoke(rewards_app, ["build-library", str(rated), "-o", str(out)])
    assert isinstance(again.exception, LmmixupError)
    no_task = ["build-library", str(rated), "-o", str(out), "--no-by-task", "--overwrite"]
    assert runner.invoke(rewards_app, no_task).exit_code == 0
    assert sorted(load_task_scorers(out).scorers) == ["default"]

    monkeypatch.setenv(LIBRARY_ENV, str(out))
    columns = {"task_type": ["qa", "qa"], "reference": [QA_ANSWER, "Bees make honey."]}
    assert alignment_reward([PERFECT, PERFECT], **columns) == [1.0, 0.0]
    assert all(0.0 <= value <= 1.0 for value in quality_reward([PERFECT, COPY], **columns))
    assert all(0.0 <= value <= 1.0 for value in mixup_reward([PERFECT, COPY], **columns))


# --- weights per task type (rewards.weights_by_task) ----------------------------------------


def _constant(values_by_task: dict[str, float], name: str):
    """A reward whose value depends only on the row's task type, named like a component."""

    def reward(completions, **columns):
        return [values_by_task[kind] for kind in columns["task_type"]]

    reward.__name__ = name
    return reward


PARTS = {
    "quality": _constant({"qa": 1.0, "mcq": 0.2}, "quality_reward"),
    "alignment": _constant({"qa": 0.5, "mcq": 1.0}, "alignment_reward"),
    "format": _constant({"qa": 0.0, "mcq": 1.0}, "format_reward"),
}
MCQ_WEIGHTS = [0.2, 0.3, 0.5]


def test_mixup_reward_weighs_each_row_by_its_task_type():
    kinds = ["qa", "mcq", "qa"]
    mixup = make_mixup_reward(*PARTS.values(), weights_by_task={"mcq": MCQ_WEIGHTS})
    plain = make_mixup_reward(*PARTS.values())
    qa = 0.5 * 1.0 + 0.4 * 0.5 + 0.1 * 0.0
    mcq = 0.2 * 0.2 + 0.3 * 1.0 + 0.5 * 1.0
    assert mixup(["x"] * 3, task_type=kinds) == pytest.approx([qa, mcq, qa])
    assert plain(["x"] * 3, task_type=kinds) == pytest.approx([qa, 0.5 * 0.2 + 0.4 + 0.1, qa])
    with pytest.raises(ValueError, match="weights"):
        make_mixup_reward(*PARTS.values(), weights_by_task={"mcq": [0.5, -0.5, 1.0]})


def test_reward_set_gives_trl_the_global_weights_unless_a_task_has_its_own():
    from lmmixup.rewards import COMPONENTS, MIXUP_WEIGHTS, RewardSet

    plain = RewardSet(dict(PARTS), dict(zip(COMPONENTS, MIXUP_WEIGHTS, strict=True)), RewardStats())
    functions, weights = plain.for_trainer()
    assert functions == [PARTS[name] for name in COMPONENTS] and weights == list(MIXUP_WEIGHTS)

    by_task = RewardSet(
        dict(PARTS),
        dict(zip(COMPONENTS, MIXUP_WEIGHTS, strict=True)),
        RewardStats(),
        {"mcq": MCQ_WEIGHTS},
    )
    functions, weights = by_task.for_trainer()
    assert weights == [1.0, 1.0, 1.0]
    assert [fn.__name__ for fn in functions] == [PARTS[n].__name__ for n in COMPONENTS]
    kinds = ["qa", "mcq"]
    trl_total = np.sum([fn(["x", "y"], task_type=kinds) for fn in functions], axis=0)
    expected = make_mixup_reward(*PARTS.values(), weights_by_task={"mcq": MCQ_WEIGHTS})(
        ["x", "y"], task_type=kinds
    )
    assert trl_total == pytest.approx(expected)
    assert by_task.score(["x", "y"], task_type=kinds)["total"] == pytest.approx(expected)
    assert plain.score(["x", "y"], task_type=kinds)["total"] != pytest.approx(expected)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"poem": [0.5, 0.4, 0.1]}, "unknown task type 'poem'"),
        ({"mcq": [0.5, 0.5]}, "three numbers >= 0"),
        ({"mcq": [0.6, 0.5, -0.1]}, "three numbers >= 0"),
        ({"mcq": [0.5, 0.4, 0.2]}, "must sum to 1"),
    ],
)
def test_weights_by_task_are_checked(table, message):
    from lmmixup.config import validate
    from lmmixup.errors import ConfigError
    from lmmixup.rewards import RewardSettings

    with pytest.raises(ConfigError, match=message):
        validate(RewardSettings, {"weights_by_task": table})
    ok = validate(RewardSettings, {"weights_by_task": {"mcq": MCQ_WEIGHTS, "tfq": [0, 0, 1]}})
    assert ok.weights_by_task["mcq"] == MCQ_WEIGHTS


def test_weights_by_task_default_is_none_and_left_out_of_the_recorded_config():
    from lmmixup.config import result_config
    from lmmixup.rewards import RewardSettings

    settings = RewardSettings()
    assert settings.weights_by_task is None
    assert "weights_by_task" not in result_config(settings)
    assert "weights_by_task" in result_config(RewardSettings(weights_by_task={"qa": [1, 0, 0]}))

"""The logprob judge reads every way its vocabulary writes a score 1-10, or refuses."""

from __future__ import annotations

import numpy as np
import pytest

from lmmixup.backends.hf import HFChatModel, single_token_ids
from lmmixup.config import RateConfig
from lmmixup.errors import ConfigError, LmmixupError
from lmmixup.method.rubric import LOGPROB_ASSISTANT_PREFIX
from lmmixup.stages.judge import make_logprob_judge
from lmmixup.stages.judge_scores import score_distribution, score_reading

DIGITS = [str(d) for d in range(10)]
BASE_PIECES = ["▁", "{", '"', "overall", '":', *DIGITS]


class PieceTokenizer:
    """SentencePiece-like: "▁" marks the start of the text and every space, then the longest
    vocabulary pieces; a character no piece covers becomes "<unk>". `digit` replaces every
    digit first (a vocabulary that normalises numbers)."""

    unk_token_id = 0

    def __init__(self, pieces: list[str], digit: str | None = None):
        self.vocab = {piece: i for i, piece in enumerate(["<unk>", *pieces])}
        self.digit = digit

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if self.digit is not None:
            text = "".join(self.digit if c.isdigit() else c for c in text)
        rest, ids = "▁" + text.replace(" ", "▁"), []
        while rest:
            piece = max((p for p in self.vocab if rest.startswith(p)), key=len, default=None)
            ids.append(self.vocab[piece] if piece else self.vocab["<unk>"])
            rest = rest[len(piece) if piece else 1 :]
        return ids


class FakeJudge:
    """A judge whose next token after the prefix is drawn from `probs` (by piece), and after a
    "1" from `after_one`."""

    name = "fake-judge"
    fingerprint = "fake"

    def __init__(
        self, tokenizer, probs: dict[str, float], after_one: dict[str, float] | None = None
    ):
        self.tokenizer = tokenizer
        self.probs, self.after_one = probs, after_one or {}

    def single_token_ids(self, context: str, candidates: list[str]) -> list[int | None]:
        return single_token_ids(self.tokenizer, context, candidates)

    def next_token_logprobs(self, texts, candidates, context=""):
        ids = self.single_token_ids(context, candidates)
        assert None not in ids
        table = self.after_one if context.endswith("1") else self.probs
        by_id = {self.tokenizer.vocab[piece]: p for piece, p in table.items()}
        return np.log([[by_id.get(i, 1e-300) for i in ids] for _ in texts])


def test_a_shared_first_piece_is_not_read_as_the_digit():
    tokenizer = PieceTokenizer(BASE_PIECES)
    alone = [tokenizer.encode(d)[0] for d in DIGITS]
    assert len(set(alone)) == 1  # encode(c)[0] is "▁" for every digit
    in_context = single_token_ids(tokenizer, LOGPROB_ASSISTANT_PREFIX, DIGITS)
    assert in_context == [tokenizer.vocab[d] for d in DIGITS]


def test_ten_as_one_then_zero_and_no_space_variants():
    judge = FakeJudge(PieceTokenizer(BASE_PIECES), {"7": 0.4, "1": 0.2}, {"0": 0.75})
    reading = score_reading(judge)
    assert reading.candidates == tuple(str(v) for v in range(1, 10)) and reading.tens == ("1",)
    [row] = score_distribution(judge, ["rendered prompt"])
    expected = np.zeros(10)
    expected[[6, 0, 9]] = [0.4, 0.2 * 0.25, 0.2 * 0.75]
    np.testing.assert_allclose(row, expected, atol=1e-12)


def test_single_token_ten_and_space_prefixed_scores_are_read():
    spaced = [f"▁{v}" for v in range(1, 11)]
    judge = FakeJudge(
        PieceTokenizer([*BASE_PIECES, "10", *spaced]),
        {"7": 0.3, "▁7": 0.2, "10": 0.1, "▁10": 0.05, "1": 0.1},
    )
    reading = score_reading(judge)
    assert set(reading.candidates) == {str(v) for v in range(1, 11)} | {
        f" {v}" for v in range(1, 11)
    }
    assert reading.tens == ()
    [row] = score_distribution(judge, ["rendered prompt"])
    expected = np.zeros(10)
    expected[[6, 9, 0]] = [0.5, 0.15, 0.1]
    np.testing.assert_allclose(row, expected, atol=1e-12)


@pytest.mark.parametrize(
    "tokenizer",
    [
        PieceTokenizer([p for p in BASE_PIECES if p not in DIGITS]),  # every digit is "<unk>"
        PieceTokenizer([p for p in BASE_PIECES if p != "7"]),  # "7" has no token of its own
        PieceTokenizer([*BASE_PIECES, "#"], digit="#"),  # every digit is the one piece "#"
    ],
)
def test_a_vocabulary_without_distinct_score_tokens_is_refused(tokenizer):
    judge = FakeJudge(tokenizer, {})
    with pytest.raises(ConfigError, match="fake-judge.*--mode generate"):
        make_logprob_judge(judge, RateConfig())


def test_the_bundled_tokenizer_reads_digits_and_ten_as_one_then_zero(tiny_llama):
    model = HFChatModel(str(tiny_llama), dtype="float32")
    reading = score_reading(model)
    assert reading.candidates == tuple(str(v) for v in range(1, 10)) and reading.tens == ("1",)
    assert model.single_token_ids(LOGPROB_ASSISTANT_PREFIX, [" 7", "10"]) == [None, None]
    with pytest.raises(LmmixupError, match="'10' is not a single token"):
        model.next_token_logprobs(["x"], ["10"], LOGPROB_ASSISTANT_PREFIX)


def test_the_distribution_equals_the_model_s_own_next_token_probabilities(tiny_llama):
    import torch

    model = HFChatModel(str(tiny_llama), dtype="float32")
    chat = [{"role": "user", "content": "Rate it."}]
    text = model.render(chat, LOGPROB_ASSISTANT_PREFIX)
    reading = score_reading(model)
    [row] = score_distribution(model, [text])
    ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        probs = torch.softmax(model.model(**ids).logits[0, -1].float(), -1).numpy()
    digit_ids = model.single_token_ids(LOGPROB_ASSISTANT_PREFIX, list(reading.candidates))
    np.testing.assert_allclose(row[:9], probs[digit_ids], rtol=1e-4)


@pytest.mark.parametrize("by_task", [False, True])
def test_the_logprob_judge_sees_the_task_paragraph_only_with_rubric_by_task(by_task):
    from lmmixup.method.rubric import TASK_GUIDANCE

    class RenderingJudge(FakeJudge):
        rendered: list[str] = []

        def render(self, messages, prefix):
            RenderingJudge.rendered.append(messages[0]["content"])
            return messages[0]["content"] + prefix

    judge = RenderingJudge(PieceTokenizer(BASE_PIECES), {"7": 0.9})
    score = make_logprob_judge(judge, RateConfig(rubric_by_task=by_task))
    records = [
        {"id": "a", "prompt": "2+2?", "completion": "4", "task_type": "qa"},
        {"id": "b", "prompt": "Hi", "completion": "Hello"},
    ]
    assert [r["rating"]["overall"] for r in score(records)] == [7, 7]
    first, second = RenderingJudge.rendered
    assert (TASK_GUIDANCE["qa"] in first) is by_task
    assert not any(text in second for text in TASK_GUIDANCE.values())

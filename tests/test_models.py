"""Model backends: the tiny random Llama for speed, the real bundled models once."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest

from lmmixup.backends.base import GenParams
from lmmixup.backends.hf import HFChatModel
from lmmixup.progress import LIBRARY_BAR_SWITCHES


def _chat(text: str) -> list[dict]:
    return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}]


def test_batched_generation_matches_one_at_a_time(tiny_llama):
    model = HFChatModel(str(tiny_llama), dtype="float32", batch_size=4)
    prompts = [
        _chat("hi"),
        _chat("a much longer question about many different things"),
        _chat("ok?"),
    ]
    params = GenParams(max_new_tokens=8)
    batched = model.generate(prompts, params)
    single = [model.generate([p], params)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.finish_reason in ("eos", "length") and g.completion_tokens <= 8 for g in batched)
    assert model.generate([], params) == []


def test_next_token_logprobs_are_log_probabilities(tiny_llama):
    model = HFChatModel(str(tiny_llama), dtype="float32")
    texts = [model.render(_chat("score it"), '{"overall": '), model.render(_chat("x"), "")]
    logprobs = model.next_token_logprobs(texts, [str(d) for d in range(10)])
    assert logprobs.shape == (2, 10)
    assert np.all(logprobs < 0) and np.all(np.exp(logprobs).sum(axis=1) < 1)


@pytest.mark.slow
def test_real_bundled_models_produce_real_output():
    from lmmixup.backends.embed import load_embedder

    model = HFChatModel("bundled:smollm2-135m-instruct", batch_size=2)
    # Only the user turn: SmolLM2-135M derails under a custom system prompt.
    question = [{"role": "user", "content": "What is the capital of France?"}]
    [reply] = model.generate([question], GenParams(max_new_tokens=16))
    assert "Paris" in reply.text
    embedder = load_embedder("bundled:minilm")
    vectors = embedder.encode(
        ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock prices fell."]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_shared_prefix_scoring_equals_plain_forward_passes(tiny_llama):
    import torch

    model = HFChatModel(str(tiny_llama), dtype="float32", batch_size=3)
    rubric = "Rate the following pair from 1 to 10 with care, reading every word. " * 3
    texts = [
        model.render(_chat(rubric + tail), '{"overall":')
        for tail in ("short", "a longer tail here", "mid tail")
    ]
    shared = model.next_token_logprobs(texts, ["1", "5", "9"])
    plain = []
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            logits = model.model(**ids).logits[0, -1].float()
        token_ids = [
            model.tokenizer.encode(c, add_special_tokens=False)[0] for c in ("1", "5", "9")
        ]
        plain.append(torch.log_softmax(logits, -1)[token_ids].numpy())
    np.testing.assert_allclose(shared, np.array(plain), atol=1e-4)


@pytest.mark.slow
def test_embedder_remembers_recent_texts_and_gives_the_same_vectors():
    from lmmixup.backends.embed import load_embedder

    embedder = load_embedder("bundled:minilm")
    calls = []
    inner = embedder._encode
    embedder._encode = lambda texts, *a: calls.append(list(texts)) or inner(texts, *a)
    try:
        first = embedder.encode(["alpha beta", "gamma"])
        again = embedder.encode(["gamma", "delta", "alpha beta", "gamma"])
    finally:
        embedder._encode = inner
    assert calls == [["alpha beta", "gamma"], ["delta"]]
    np.testing.assert_array_equal(again[[2, 0]], first)
    np.testing.assert_array_equal(again[0], again[3])


def test_generated_text_ends_before_the_first_stop_string(tiny_llama):
    model = HFChatModel(str(tiny_llama), dtype="float32")
    tokens = model.tokenizer(
        "A: merged answer\n\nQ: another pair", return_tensors="pt", add_special_tokens=False
    )
    params = GenParams(
        max_new_tokens=64, stop=("</answer>", "\n\nQ:"), assistant_prefix="<answer>\nQ: x\n"
    )
    generation = model._decode(tokens["input_ids"][0], params, prompt_tokens=5)
    assert generation.text == "<answer>\nQ: x\nA: merged answer"
    assert generation.finish_reason == "stop"
    unstopped = model._decode(tokens["input_ids"][0], GenParams(max_new_tokens=8), prompt_tokens=5)
    assert (
        unstopped.text == "A: merged answer\n\nQ: another pair"
        and unstopped.finish_reason == "length"
    )


def test_a_row_that_ended_at_eos_is_told_from_one_that_hit_a_stop_string(tiny_llama):
    import torch

    model = HFChatModel(str(tiny_llama), dtype="float32")
    tokenizer = model.tokenizer
    encode = partial(tokenizer.encode, add_special_tokens=False)
    pads = [tokenizer.pad_token_id] * 3  # a batch's longer rows ran on
    params = GenParams(max_new_tokens=64, stop=("</answer>",))
    open_answer = "<answer>\nQ: x\nA: y"
    at_eos = model._decode(
        torch.tensor(encode(open_answer) + [tokenizer.eos_token_id] + pads), params, 5
    )
    at_stop = model._decode(torch.tensor(encode(open_answer + "</answer>") + pads), params, 5)
    assert (at_eos.text, at_eos.finish_reason, at_eos.stop_string) == (open_answer, "eos", None)
    assert (at_stop.text, at_stop.finish_reason, at_stop.stop_string) == (
        open_answer,
        "stop",
        "</answer>",
    )


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_turns_off_the_model_loading_bars(tiny_llama, quiet):
    """`lmmixup -q` (progress off) silences transformers' own "Loading weights" bar too."""
    code = (
        "import sys; from lmmixup import progress; progress.set_enabled(sys.argv[2] != 'quiet'); "
        "from transformers import AutoModelForCausalLM; "
        "AutoModelForCausalLM.from_pretrained(sys.argv[1])"
    )
    mode = "quiet" if quiet else "default"
    env = {k: v for k, v in os.environ.items() if k not in LIBRARY_BAR_SWITCHES}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_llama), mode],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert ("Loading weights" in done.stderr) is not quiet


def test_a_stop_string_in_the_prompt_does_not_end_the_reply(tiny_llama):
    model = HFChatModel(str(tiny_llama), dtype="float32")
    prompt = _chat("Example: Q: a\n\nQ: b</answer>")
    [reply] = model.generate([prompt], GenParams(max_new_tokens=6, stop=("</answer>",)))
    assert "</answer>" not in reply.text
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 6)


def _input_following(tiny_llama, batch_size: int) -> HFChatModel:
    """The tiny model with larger weights: its text then follows its input, and sampling
    gives different tokens."""
    import torch

    model = HFChatModel(str(tiny_llama), dtype="float32", batch_size=batch_size)
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.model.parameters():
            weight.normal_(0, 0.5)
    return model


def test_generation_with_a_shared_prefix_equals_plain_generation(tiny_llama):
    import torch

    # 3 prompts over 2 slots: the third takes the slot of the first to end
    model = _input_following(tiny_llama, batch_size=2)
    rubric = "Rate the following pair from 1 to 10 with care, reading every word. " * 3
    prompts = [_chat(rubric + tail) for tail in ("short", "a much longer tail here", "mid tail")]
    params = GenParams(max_new_tokens=12, repetition_penalty=1.1)
    shared = model.generate(prompts, params)
    for prompt, reply in zip(prompts, shared, strict=True):
        ids = model.tokenizer(model.render(prompt), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            plain = model.model.generate(
                **ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.1
            )
        new = model.tokenizer.decode(
            plain[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert reply.text == new and len(set(new)) > 3  # not one token repeated
        assert reply.prompt_tokens == ids["input_ids"].shape[1]


def test_sampled_replies_follow_the_seed(tiny_llama):
    model = _input_following(tiny_llama, batch_size=2)
    prompts = [_chat("one"), _chat("two"), _chat("three")]
    sample = partial(GenParams, max_new_tokens=8, temperature=1.0, top_p=0.9)
    first = [g.text for g in model.generate(prompts, sample(seed=1))]
    assert first == [g.text for g in model.generate(prompts, sample(seed=1))]
    assert first != [g.text for g in model.generate(prompts, sample(seed=2))]
    assert first != [g.text for g in model.generate(prompts, GenParams(max_new_tokens=8))]


@pytest.mark.parametrize("shared", ["", "Rate the following pair with care. " * 4])
def test_rows_that_end_give_their_slot_to_the_next_prompt(tiny_llama, shared):
    import torch

    from lmmixup.backends.hf_decoding import ContinuousDecoder

    model = _input_following(tiny_llama, batch_size=2)
    tails = (
        "x",
        "a b c d e f g",
        "a much longer tail here, with more words in it",
        "the last and longest tail of all, by far the longest one here",
    )
    prompts = [model.tokenizer.encode(model.render(_chat(shared + t))) for t in tails]
    lengths = [9, 2, 6, 4]  # each prompt's row ends after this many tokens
    decoder = ContinuousDecoder(
        model.model,
        model.tokenizer.pad_token_id,
        2,
        GenParams(max_new_tokens=20),
        lambda prompt, tokens: len(tokens) >= lengths[prompt],
    )
    with torch.inference_mode():
        generated = decoder.run(prompts)
    for prompt, tokens, length in zip(prompts, generated, lengths, strict=True):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            plain = model.model.generate(ids, max_new_tokens=length, do_sample=False)
        assert tokens == plain[0, len(prompt) :].tolist()


def test_the_repetition_penalty_counts_the_prompt_tokens_as_a_lone_generate_does(tiny_llama):
    """A prompt that ends with the start of the model's own greedy reply, cut just after a
    token the reply repeats: the penalty must then steer away from that prompt token."""
    import torch

    from lmmixup.backends.hf_decoding import ContinuousDecoder

    model = HFChatModel(str(tiny_llama), dtype="float32")
    start = model.tokenizer.encode(model.render(_chat("one two three")))

    def plain(prompt: list[int], penalty: float) -> list[int]:
        with torch.inference_mode():
            out = model.model.generate(
                torch.tensor([prompt]),
                max_new_tokens=8,
                do_sample=False,
                repetition_penalty=penalty,
            )
        return out[0, len(prompt) :].tolist()

    reply = plain(start, 1.0)
    repeated = next(t for i, t in enumerate(reply) if t in reply[:i])
    prompt = start + reply[: reply.index(repeated) + 1]
    expected = plain(prompt, 5.0)
    assert expected != plain(prompt, 1.0)  # the penalty on the prompt's tokens matters here
    decoder = ContinuousDecoder(
        model.model,
        model.tokenizer.pad_token_id,
        2,
        GenParams(max_new_tokens=8, repetition_penalty=5.0),
        lambda _prompt, tokens: False,
    )
    with torch.inference_mode():
        assert decoder.run([prompt]) == [expected]

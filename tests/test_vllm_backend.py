"""`backend: vllm`: the adapter against a stand-in `vllm` module (no GPU here), and the real
thing where vLLM and a GPU are present."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from lmmixup.backends import load_generator
from lmmixup.backends.base import GenParams
from lmmixup.config import BackendConfig
from lmmixup.config.base import VLLM_BATCH
from lmmixup.errors import LmmixupError


class FakeLLM:
    """Records what it is asked; replies with scripted completions."""

    def __init__(self, model, dtype, tokenizer, options):
        self.model, self.dtype, self.tokenizer = model, dtype, tokenizer
        self.options = options  # tensor_parallel_size, gpu_memory_utilization, max_model_len
        self.requests = []

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, sampling, use_tqdm=True):
        self.requests.append((prompts, sampling))
        replies = [  # text, finish_reason, stop_reason (the stop string, None = EOS), tokens
            ("merged pair", "stop", "</answer>", [1, 2]),
            ("runs on and on", "length", None, [3] * 8),
            ("ended by the model", "stop", None, [4] * 3),
            ("ended on another EOS token", "stop", 2, [5] * 4),
        ]
        return [
            SimpleNamespace(
                prompt_token_ids=[0] * (i + 5),
                outputs=[
                    SimpleNamespace(
                        text=text, finish_reason=reason, stop_reason=stop, token_ids=ids
                    )
                ],
            )
            for i, (text, reason, stop, ids) in enumerate(replies[: len(prompts)])
        ]


@pytest.fixture
def fake_vllm(monkeypatch, tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    created = []

    def make_llm(model, dtype, **options):
        created.append(FakeLLM(model, dtype, tokenizer, options))
        return created[-1]

    module = SimpleNamespace(LLM=make_llm, SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return created


def test_vllm_adapter_maps_prompts_params_and_replies(fake_vllm, tiny_llama):
    model = load_generator(BackendConfig(backend="vllm", model=str(tiny_llama)))
    params = GenParams(max_new_tokens=8, stop=("</answer>",), assistant_prefix="<answer>\nQ:")
    messages = [[{"role": "user", "content": "merge these"}]]
    messages += [[{"role": "user", "content": text}] for text in ("b", "c", "d")]
    first, second, third, fourth = model.generate(messages, params)

    (llm,) = fake_vllm
    assert llm.model == str(tiny_llama) and llm.dtype == "auto"
    (prompts, sampling) = llm.requests[0]
    assert prompts[0].endswith("assistant\n<answer>\nQ:") and "merge these" in prompts[0]
    assert sampling == {
        "max_tokens": 8,
        "temperature": 0.0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "stop": ["</answer>"],
        "seed": 0,
    }
    assert (first.text, first.finish_reason, first.completion_tokens, first.prompt_tokens) == (
        "<answer>\nQ:merged pair",
        "stop",
        2,
        5,
    )
    assert first.stop_string == "</answer>"
    assert second.finish_reason == "length" and second.completion_tokens == 8
    # vLLM's stop_reason None (EOS) or a token id (another EOS token): the model ended it
    assert [(g.finish_reason, g.stop_string) for g in (third, fourth)] == [("eos", None)] * 2


def test_vllm_gets_the_gpu_settings_and_whole_stage_batches(fake_vllm, tiny_llama):
    from lmmixup.config import RateConfig
    from lmmixup.stages.judge import JudgeStage

    settings = {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 4096}
    cfg = BackendConfig(backend="vllm", model=str(tiny_llama), **settings)
    model = load_generator(cfg)
    assert fake_vllm[0].options == settings
    messages = [[{"role": "user", "content": str(i)}] for i in range(3)]
    model.generate(messages, GenParams(max_new_tokens=4))
    assert len(fake_vllm[0].requests[0][0]) == 3  # one vLLM call for the whole batch
    # a stage hands vLLM batches of 1024 unless batch_size is set; hf keeps its 16
    assert JudgeStage(RateConfig(judge=cfg)).batch_size == VLLM_BATCH == 1024
    assert BackendConfig(backend="vllm", batch_size=64).batch_size == 64
    assert BackendConfig(backend="hf").batch_size == 16


def test_vllm_backend_without_the_package_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(LmmixupError, match="vllm serve"):
        load_generator(BackendConfig(backend="vllm"))


def _has_gpu_vllm() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(not _has_gpu_vllm(), reason="needs vllm and a GPU")
def test_real_vllm_generates_with_the_bundled_model():
    model = load_generator(BackendConfig(backend="vllm", model="bundled:smollm2-135m-instruct"))
    (reply,) = model.generate(
        [[{"role": "user", "content": "Say hello."}]], GenParams(max_new_tokens=16)
    )
    assert reply.ok and reply.completion_tokens > 0 and reply.text.strip()

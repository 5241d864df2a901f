"""Local transformers chat models: batched, length-bucketed, left-padded generation and scoring."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from lmmixup.assets import model_fingerprint, resolve_model
from lmmixup.backends.base import Generation, GenParams, Messages


def pick_dtype(name: str):
    """`auto` -> bfloat16 where the hardware runs it natively (CUDA with bf16, AVX512-BF16/AMX CPUs)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (
        torch.bfloat16
        if torch.backends.mkldnn.is_available() and _cpu_has_bf16()
        else torch.float32
    )


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class HFChatModel:
    """A causal LM with a chat template, loaded once; generation batches are sorted by length."""

    def __init__(
        self, model: str, dtype: str = "auto", batch_size: int = 16, device: str | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bars report the work
        self.name = model
        path = resolve_model(model)
        self.fingerprint = model_fingerprint(path) + f"|{dtype}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = pick_dtype(dtype)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        )

    def render(self, messages: Messages, assistant_prefix: str = "") -> str:
        """The chat-formatted prompt text, ready for the model's reply (optionally pre-filled)."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text + assistant_prefix

    def _batches(self, texts: list[str]) -> list[list[int]]:
        """Indices grouped into batches of similar token length (less padding, faster)."""
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        return [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]

    def _encode(self, texts: list[str]):
        return self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]:
        """Reply to each message list; stops at EOS, a stop string, or max_new_tokens."""
        import torch

        texts = [self.render(messages, params.assistant_prefix) for messages in prompts]
        results: list[Generation | None] = [None] * len(texts)
        for batch in self._batches(texts):
            inputs = self._encode([texts[i] for i in batch])
            sampling = params.temperature > 0
            if sampling:
                torch.manual_seed(params.seed)
            with torch.inference_mode():
                output = self.model.generate(
                    **inputs,
                    max_new_tokens=params.max_new_tokens,
                    do_sample=sampling,
                    temperature=params.temperature if sampling else None,
                    top_p=params.top_p if sampling else None,
                    top_k=None,
                    repetition_penalty=params.repetition_penalty,
                    stop_strings=list(params.stop) or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for row, index in enumerate(batch):
                results[index] = self._decode(
                    new_tokens[row], params, int(inputs["attention_mask"][row].sum())
                )
        return results  # type: ignore[return-value]

    def _decode(self, tokens, params: GenParams, prompt_tokens: int) -> Generation:
        ids = tokens.tolist()
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        count = len(ids)
        while count and ids[count - 1] == pad:
            count -= 1
        ended_on_eos = count < len(ids) or (count and ids[count - 1] == eos)
        text = params.assistant_prefix + self.tokenizer.decode(
            ids[:count], skip_special_tokens=True
        )
        stopped = (
            ended_on_eos
            or any(stop in text for stop in params.stop)
            or count < params.max_new_tokens
        )
        return Generation(text, "stop" if stopped else "length", count, prompt_tokens)

    @cached_property
    def _digit_token_ids(self) -> list[int]:
        return [self.tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]

    def next_token_logprobs(self, texts: list[str], candidates: list[str]) -> np.ndarray:
        """log P(candidate's first token | text) for each text; one forward pass per batch.

        Texts are already rendered (see `render`). Returns an (n, len(candidates)) array.
        """
        import torch

        ids = [self.tokenizer.encode(c, add_special_tokens=False)[0] for c in candidates]
        out = np.zeros((len(texts), len(ids)), dtype=np.float64)
        for batch in self._batches(texts):
            inputs = self._encode([texts[i] for i in batch])
            with torch.inference_mode():
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)[:, ids].cpu().numpy()
            out[batch] = logprobs
        return out

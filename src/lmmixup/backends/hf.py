"""Local transformers chat models: continuously batched generation, length-bucketed scoring."""

from __future__ import annotations

import numpy as np

from lmmixup.backends.base import Generation, GenParams, Messages, cut_at_stop
from lmmixup.backends.chat import render_chat
from lmmixup.backends.device import resolve_device
from lmmixup.errors import LmmixupError
from lmmixup.io.assets import model_fingerprint, resolve_model


def pick_dtype(name: str, device: str | None = None):
    """`auto` -> bfloat16 where the hardware runs it natively (CUDA with bf16, AVX512-BF16/AMX
    CPUs), float16 on a GPU without bf16, else float32. `device`: where the model will run
    (None: where `auto` would put it)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    device = device or resolve_device("auto")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
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
    """A causal LM with a chat template, loaded once; prompts are taken shortest first."""

    def __init__(self, model: str, dtype: str = "auto", batch_size: int = 16, device: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bars report the work
        self.name = model
        path = resolve_model(model)
        self.fingerprint = model_fingerprint(path) + f"|{dtype}"
        self.device = resolve_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        )

    def render(self, messages: Messages, assistant_prefix: str = "") -> str:
        """The chat-formatted prompt text, ready for the model's reply (optionally pre-filled)."""
        return render_chat(self.tokenizer, messages, assistant_prefix)

    def _token_rows(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _batches(self, rows: list[list[int]]) -> list[list[int]]:
        """Indices grouped into batches of similar token length (less padding, faster)."""
        order = np.argsort([len(row) for row in rows], kind="stable")
        return [
            order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)
        ]

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]:
        """Reply to each message list; stops at EOS, a stop string, or max_new_tokens.

        At most `batch_size` rows decode at once, and a row that ends gives its slot to the
        next prompt (`hf_decoding.ContinuousDecoder`); the prompts' shared token prefix is
        run once.
        """
        import torch

        from lmmixup.backends.hf_decoding import ContinuousDecoder

        if not prompts:
            return []
        texts = [self.render(messages, params.assistant_prefix) for messages in prompts]
        rows = self._token_rows(texts)
        decoder = ContinuousDecoder(
            self.model, self.tokenizer.pad_token_id, self.batch_size, params, self._ends(params)
        )
        with torch.inference_mode():
            generated = decoder.run(rows)
        return [
            self._decode(tokens, params, len(row))
            for tokens, row in zip(generated, rows, strict=True)
        ]

    def _ends(self, params: GenParams):
        """Whether a row's new tokens end it: an end-of-sequence token, or a stop string in
        the text of its last few tokens (every token carries at least one character)."""
        ends = self.model.generation_config.eos_token_id
        ends = {self.tokenizer.eos_token_id, *(ends if isinstance(ends, list) else [ends])}
        stops = params.stop
        window = max((len(stop) for stop in stops), default=0) + 1

        def finished(_prompt: int, tokens: list[int]) -> bool:
            if tokens[-1] in ends:
                return True
            if not stops:
                return False
            tail = self.tokenizer.decode(tokens[-window:], skip_special_tokens=True)
            return any(stop in tail for stop in stops)

        return finished

    def _decode(self, tokens, params: GenParams, prompt_tokens: int) -> Generation:
        """Text and finish reason of one generated row: stop (a stop string), eos or length.

        Like OpenAI-compatible servers, the text ends before the first stop string it hit.
        Trailing pad tokens are not counted (a tokenizer without its own pad token pads with
        EOS, so a final EOS is not counted either). A row that ended before `max_new_tokens`
        or on the EOS token, with no stop string in its text, ended at end-of-sequence.
        """
        ids = list(tokens)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        count = len(ids)
        while count and ids[count - 1] == pad:
            count -= 1
        generated = self.tokenizer.decode(ids[:count], skip_special_tokens=True)
        generated, stop_string = cut_at_stop(generated, params.stop)
        text = params.assistant_prefix + generated
        if stop_string is not None:
            reason = "stop"
        elif count < params.max_new_tokens or (count and ids[count - 1] == eos):
            reason = "eos"
        else:
            reason = "length"
        return Generation(text, reason, count, prompt_tokens, stop_string=stop_string)

    def single_token_ids(self, context: str, candidates: list[str]) -> list[int | None]:
        """The token each candidate adds right after `context` (see `single_token_ids`)."""
        return single_token_ids(self.tokenizer, context, candidates)

    def next_token_logprobs(
        self, texts: list[str], candidates: list[str], context: str = ""
    ) -> np.ndarray:
        """log P(candidate | text) for each rendered text; (n, len(candidates)).

        Every text ends with `context` (e.g. a judge's pre-filled `{"overall":`), after which
        each candidate must be a single token; a candidate that is not is an error.
        One forward pass per batch. The token prefix that all texts of a batch share (e.g. a
        judge's rubric) is run once and its key/value cache reused for every row.
        """
        import torch

        ids = self.single_token_ids(context, candidates)
        if None in ids:
            bad = candidates[ids.index(None)]
            raise LmmixupError(
                f"{self.name}: {bad!r} is not a single token after {context!r} in this "
                "model's vocabulary, so its probability cannot be read in one step"
            )
        rows = self._token_rows(texts)
        out = np.zeros((len(texts), len(ids)), dtype=np.float64)
        for batch in self._batches(rows):
            with torch.inference_mode():
                logits = self._last_logits([rows[i] for i in batch]).float()
            out[batch] = torch.log_softmax(logits, dim=-1)[:, ids].cpu().numpy()
        return out

    def _last_logits(self, rows: list[list[int]]):
        """Next-token logits after each token row, sharing the rows' common prefix."""
        import torch

        from lmmixup.backends.hf_decoding import shared_prefix

        cache, shared = shared_prefix(self.model, rows)
        if cache is not None:
            cache.batch_repeat_interleave(len(rows))
        suffixes = [row[shared:] for row in rows]
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor(
            [s + [pad] * (width - len(s)) for s in suffixes], device=self.device
        )
        suffix_mask = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in suffixes], device=self.device
        )
        mask = torch.cat(
            [
                torch.ones(len(rows), shared, dtype=suffix_mask.dtype, device=self.device),
                suffix_mask,
            ],
            1,
        )
        positions = (shared + torch.arange(width, device=self.device)).expand(len(rows), -1)
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache
        ).last_hidden_state
        last = hidden[torch.arange(len(rows)), suffix_mask.sum(1) - 1]
        return self.model.get_output_embeddings()(last)


def single_token_ids(tokenizer, context: str, candidates: list[str]) -> list[int | None]:
    """The one token each candidate adds when written right after `context`, or None where it
    takes several tokens, merges with the end of `context` or is the unknown token.

    Tokenised in context, not alone: a SentencePiece vocabulary writes "7" alone as "▁" + "7",
    whose first piece every digit shares.
    """
    base = tokenizer.encode(context, add_special_tokens=False)
    unknown = getattr(tokenizer, "unk_token_id", None)
    found: list[int | None] = []
    for candidate in candidates:
        ids = tokenizer.encode(context + candidate, add_special_tokens=False)
        one = len(ids) == len(base) + 1 and ids[: len(base)] == base and ids[-1] != unknown
        found.append(ids[-1] if one else None)
    return found

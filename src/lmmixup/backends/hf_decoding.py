"""Continuous batching for the hf backend: a row leaves the batch the step it finishes and a
waiting prompt takes its slot, so no step is spent on rows that are done.

`transformers`' `generate` decodes a batch until its longest row ends; with the distiller's
replies (of 12, ten ended within 70 tokens and two ran to the 256-token cap) most of those
steps were wasted.
The prompts' shared token prefix (a judge's rubric, the distiller's instructions) is run once
per call and its key/value cache copied into every new row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

from lmmixup.backends.base import GenParams

MIN_SHARED_PREFIX = 16
"""Tokens the prompts must share before their common prefix is run once and reused."""


def _common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens every row shares."""
    shortest = min(len(row) for row in rows)
    for position in range(shortest):
        token = rows[0][position]
        if any(row[position] != token for row in rows):
            return position
    return shortest


def shared_prefix(model, rows: list[list[int]]) -> tuple[object | None, int]:
    """The rows' shared token prefix run once: its key/value cache (one row) and its length;
    (None, 0) when the rows share under `MIN_SHARED_PREFIX` tokens. At least one token of
    each row stays outside the cache (the model must read one to give its next logits)."""
    shared = min(_common_prefix_length(rows), min(len(row) for row in rows) - 1)
    if shared < MIN_SHARED_PREFIX:
        return None, 0
    ids = torch.tensor([rows[0][:shared]], device=model.device)
    return model.base_model(input_ids=ids, use_cache=True).past_key_values, shared


class _Batch:
    """The rows being decoded: their key/value cache (left-padded to one length), attention
    mask, next position, last token and the tokens each has seen (prompt and new tokens, a
    `[rows, vocabulary]` mask for the repetition penalty), in one order."""

    def __init__(self) -> None:
        self.rows: list[int] = []  # the prompt index of each batch row
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.positions: list[int] = []
        self.last: list[int] = []

    def add(
        self,
        rows: list[int],
        cache,
        mask: torch.Tensor,
        seen: torch.Tensor,
        positions: list[int],
    ) -> None:
        """Append rows with their own cache, mask and seen tokens; the shorter side is
        left-padded."""
        if self.cache is None:
            self.cache, self.mask, self.seen = cache, mask, seen
        else:
            self.seen = torch.cat([self.seen, seen])
            width = max(self.mask.shape[1], mask.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
                mine.values = torch.cat(
                    [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
                )
            self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)])
        self.rows += rows
        self.positions += positions

    def keep(self, kept: list[int]) -> None:
        """Keep only the batch rows at `kept`, and drop the columns no kept row attends to."""
        if len(kept) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in kept]
        self.positions = [self.positions[i] for i in kept]
        self.last = [self.last[i] for i in kept]
        if not kept:
            self.cache = self.mask = self.seen = None
            return
        index = torch.tensor(kept, device=self.mask.device)
        self.seen = self.seen.index_select(0, index)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(0).int().argmax())  # the first column some row attends to
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """`tensor` (a mask `[rows, length]` or a cache `[rows, heads, length, dim]`) left-padded
    with zeros to `width` along its length."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[axis]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


class ContinuousDecoder:
    """Decode prompts (token rows) with at most `slots` rows at once, refilling a row's slot
    the step it ends.

    `finished(prompt_index, generated)` says whether a row's new tokens end it (EOS or a stop
    string); a row also ends at `params.max_new_tokens`. Greedy when `params.temperature` is
    0, else sampled (temperature, then top-p) from a generator seeded with `params.seed`. The
    repetition penalty counts each row's own prompt and new tokens, as a lone `generate`
    call does.
    """

    def __init__(
        self,
        model,
        pad_id: int,
        slots: int,
        params: GenParams,
        finished: Callable[[int, list[int]], bool],
    ):
        self.model, self.pad_id, self.slots, self.params = model, pad_id, slots, params
        self.finished = finished
        self.device = model.device
        self.random = None
        if params.temperature > 0:
            self.random = torch.Generator(device=self.device).manual_seed(params.seed)

    def run(self, prompts: list[list[int]]) -> list[list[int]]:
        """The new tokens of each prompt (at least one), in prompt order."""
        generated: list[list[int]] = [[] for _ in prompts]
        prefix, shared = shared_prefix(self.model, prompts)
        waiting = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
        batch = _Batch()
        while waiting or batch.rows:
            if waiting and len(batch.rows) < self.slots:
                count = min(self.slots - len(batch.rows), len(waiting))
                new = [waiting.popleft() for _ in range(count)]
                logits = self._prefill(batch, new, prompts, prefix, shared)
                self._choose(batch, logits, generated, first=len(batch.rows) - count)
            else:
                logits = self._step(batch)
                self._choose(batch, logits, generated, first=0)
            done = [
                len(generated[row]) >= self.params.max_new_tokens
                or self.finished(row, generated[row])
                for row in batch.rows
            ]
            batch.keep([place for place, ended in enumerate(done) if not ended])
        return generated

    def _prefill(
        self, batch: _Batch, new: list[int], prompts: list[list[int]], prefix, shared: int
    ):
        """Run the new rows' prompts (after the shared prefix, left-padded among themselves),
        add them to the batch; their next-token logits."""
        suffixes = [prompts[i][shared:] for i in new]
        width = max(len(s) for s in suffixes)
        ids = [[self.pad_id] * (width - len(s)) + s for s in suffixes]
        mask = [[1] * shared + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
        positions = [
            [shared] * (width - len(s)) + list(range(shared, shared + len(s))) for s in suffixes
        ]
        cache = None
        if prefix is not None:
            cache = type(prefix)()
            for index, layer in enumerate(prefix.layers):
                cache.update(
                    layer.keys.expand(len(new), -1, -1, -1).contiguous(),
                    layer.values.expand(len(new), -1, -1, -1).contiguous(),
                    index,
                )
        mask_tensor = torch.tensor(mask, device=self.device)
        output = self.model(
            input_ids=torch.tensor(ids, device=self.device),
            attention_mask=mask_tensor,
            position_ids=torch.tensor(positions, device=self.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = output.logits[:, -1]
        seen = torch.zeros(len(new), logits.shape[-1], dtype=torch.bool, device=self.device)
        for place, index in enumerate(new):
            seen[place, prompts[index]] = True
        batch.add(new, output.past_key_values, mask_tensor, seen, [len(prompts[i]) for i in new])
        return logits

    def _step(self, batch: _Batch):
        """Feed every row its last token; the next-token logits."""
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
        output = self.model(
            input_ids=torch.tensor([[token] for token in batch.last], device=self.device),
            attention_mask=batch.mask,
            position_ids=torch.tensor([[p] for p in batch.positions], device=self.device),
            cache=batch.cache,
            use_cache=True,
        )
        batch.cache = output.past_key_values
        batch.positions = [p + 1 for p in batch.positions]
        return output.logits[:, -1]

    def _choose(self, batch: _Batch, logits, generated: list[list[int]], first: int) -> None:
        """Pick the next token of batch rows `first`.. from their logits (the repetition
        penalty on the tokens each row has seen, for all rows at once)."""
        logits = logits.float()
        seen = batch.seen[first:]
        penalty = self.params.repetition_penalty
        if penalty != 1.0:
            scores = logits[seen]
            logits[seen] = torch.where(scores < 0, scores * penalty, scores / penalty)
        chosen = logits.argmax(-1) if self.random is None else self._sample(logits)
        seen[torch.arange(len(chosen), device=seen.device), chosen] = True  # a view: batch.seen
        tokens = chosen.tolist()
        for row, token in zip(batch.rows[first:], tokens, strict=True):
            generated[row].append(token)
        batch.last = batch.last[:first] + tokens

    def _sample(self, logits):
        """One token per row: temperature, then the top-p nucleus, then a draw."""
        logits = logits / self.params.temperature
        top_p = self.params.top_p
        if top_p is not None and top_p < 1.0:
            ordered, order = logits.sort(-1, descending=True)
            outside = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) > top_p
            ordered = ordered.masked_fill(outside, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
        return torch.multinomial(logits.softmax(-1), 1, generator=self.random).squeeze(-1)

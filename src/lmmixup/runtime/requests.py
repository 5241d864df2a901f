"""Stages whose model work is plain chat generation, split so an executor can do the calls.

A `RequestStage` says, for a batch of records, which chat requests each record needs
(`requests`: a message list and its decoding settings; none for a record the model is not
asked about) and turns the replies into its results (`complete`: outputs and rejects, as
`process` returns them). Its own `process` is `requests`, then `generate_requests` on its
generator, then `complete`, so the local executor and an executor that sends the requests
elsewhere (`ray_llm`: ray.data.llm's vLLM processor) share one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lmmixup.backends.base import Generation, Generator, GenParams, Messages
from lmmixup.config import BackendConfig
from lmmixup.runtime.executor import RecordStage


@dataclass(frozen=True)
class Request:
    """One chat request: the messages and the decoding settings (pre-fill included)."""

    messages: Messages
    params: GenParams


@runtime_checkable
class RequestStage(RecordStage, Protocol):
    """A per-record stage whose model calls an executor may make itself (module doc).

    - `llm_backend()`: the model the requests are for, None when this stage's work is not
      plain chat generation (e.g. a judge reading token probabilities): it then runs as a
      `RecordStage`.
    - `open_for_replies()`: opens what `complete` needs (an embedder, the member index),
      not the model; `close()` closes it.
    - `requests(batch)`: per record, the requests it needs, in order.
    - `complete(batch, replies)`: per record, its result from the replies to its requests
      (same order); a failed reply (`Generation.error`) is the stage's recorded failure.
    """

    def llm_backend(self) -> BackendConfig | None: ...

    def open_for_replies(self) -> None: ...

    def requests(self, batch: list[dict]) -> list[list[Request]]: ...

    def complete(self, batch: list[dict], replies: list[list[Generation]]) -> list[dict]: ...


def generate_requests(
    generator: Generator, requests: list[list[Request]]
) -> list[list[Generation]]:
    """The generator's replies to each record's requests: one `generate` call per distinct
    decoding setting (in the order first asked), its prompts in record order."""
    groups: dict[GenParams, list[tuple[int, int]]] = {}
    for record, asked in enumerate(requests):
        for index, request in enumerate(asked):
            groups.setdefault(request.params, []).append((record, index))
    replies: list[list[Generation | None]] = [[None] * len(asked) for asked in requests]
    for params, places in groups.items():
        prompts = [requests[record][index].messages for record, index in places]
        for (record, index), reply in zip(places, generator.generate(prompts, params), strict=True):
            replies[record][index] = reply
    return replies  # type: ignore[return-value]

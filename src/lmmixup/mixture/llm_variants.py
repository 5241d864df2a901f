"""Variants written by the degrader model; a failed reply is counted and left to the rules."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmmixup.backends.base import Generator, GenParams, RequestBudgetExhausted
from lmmixup.config import BackendConfig
from lmmixup.mixture.config import MixtureConfig
from lmmixup.mixture.degrade import (
    LLM_OPERATOR,
    Variant,
    llm_degrade_messages,
    parse_llm_degradation,
)
from lmmixup.mixture.members import Slot
from lmmixup.progress import progress

log = logging.getLogger(__name__)


@dataclass
class LlmReport:
    """The degrader model's work: variants asked for, written, and failures by reason."""

    model: str
    requested: int = 0
    written: int = 0
    failed: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        """The counts as the card writes them."""
        return {
            "model": self.model,
            "requested": self.requested,
            "written": self.written,
            "failed": dict(sorted(self.failed.items())),
            "fell_back_to_rules": sum(self.failed.values()),
        }


def _llm_failure(slot: Slot, generation: Any) -> tuple[tuple[str, str] | None, str | None]:
    """The pair a model reply holds, or why it cannot be used."""
    if generation is None:
        return None, "request_budget_spent"
    if not generation.ok:
        return None, "generation_error"
    pair = parse_llm_degradation(generation.text)
    if pair is None:
        return None, "truncated" if generation.finish_reason == "length" else "unparsable"
    if pair == (slot.source.prompt.strip(), slot.source.completion.strip()):
        return None, "unchanged"
    return pair, None


def llm_variants(
    slots: Sequence[Slot], generator: Generator, cfg: MixtureConfig
) -> tuple[dict[Slot, Variant], LlmReport]:
    """Variants written by the degrader model, by slot; failures are counted, not returned."""
    report = LlmReport(generator.name, requested=len(slots))
    params = GenParams(
        max_new_tokens=cfg.llm_max_new_tokens,
        temperature=cfg.llm_temperature,
        seed=cfg.seed,
        assistant_prefix=cfg.llm_prefix,
    )
    batch = (cfg.degrader or BackendConfig()).batch_size
    written: dict[Slot, Variant] = {}
    budget_spent = False
    with progress("mixture: model degradations", len(slots), unit="variant") as advance:
        for start in range(0, len(slots), batch):
            chunk = slots[start : start + batch]
            if budget_spent:
                generations: list = [None] * len(chunk)
            else:
                prompts = [
                    llm_degrade_messages(s.source.prompt, s.source.completion, s.number)
                    for s in chunk
                ]
                try:
                    generations = generator.generate(prompts, params)
                except RequestBudgetExhausted as exc:
                    generations, budget_spent = exc.results, True
            for slot, generation in zip(chunk, generations, strict=True):
                pair, reason = _llm_failure(slot, generation)
                if reason is not None:
                    report.failed[reason] += 1
                else:
                    written[slot] = Variant(*pair, (LLM_OPERATOR,))
            advance(len(chunk))
    report.written = len(written)
    if report.failed:
        log.warning(
            "degrader: %d of %d variants failed (%s); rule-based variants replace them",
            sum(report.failed.values()),
            report.requested,
            dict(report.failed),
        )
    return written, report

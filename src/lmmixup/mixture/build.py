"""Build the MIXTURE files: the distiller's training data (clusters of degraded variants -> target).

Each record pairs one high-quality target, written in its task type's `<answer>` layout, with a
cluster of 2-20 low-quality variants of it (the `members`), shuffled. The steps, one module each:

1. `seeds`: import the seed records (any pool file, or the built-in `gsm8k` and `sharegpt`)
   and keep the good ones.
2. `plans`: merge pairs of similar seeds (`pairs`, `neighbours`) into one qa target numbered
   `1.` / `2.`; write every other seed as one task type (`targets`).
3. `members`: degrade each target into its cluster by rule (`degrade`) or, with a `degrader`
   model, by that model for a fraction of the variants (`llm_variants`).
4. `splits`: `sft_fraction` of the records for SFT, the rest for GRPO, of which
   `grpo_test_fraction` is held out (`assemble` runs steps 2-4 in memory).
5. Here: one JSONL file per split, `card.json` and `card.md` (`card`), rejects beside them.

Everything is seeded: the same seed and inputs give identical files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from lmmixup.backends.base import Generator
from lmmixup.io.jsonl import write_records
from lmmixup.mixture.assemble import make_records
from lmmixup.mixture.card import card_markdown, make_card
from lmmixup.mixture.config import REJECTS_FILE, SPLITS, MixtureConfig
from lmmixup.mixture.neighbours import load_pair_embedder
from lmmixup.mixture.seeds import load_seeds
from lmmixup.types import Embedder


def write_mixture(out_dir: str | Path, records: Sequence[dict], card: dict) -> dict[str, Path]:
    """Write one JSONL file per split, card.json and card.md; returns their paths."""
    out = Path(out_dir)
    paths = {split: out / f"{split}.jsonl" for split in SPLITS}
    for split, path in paths.items():
        write_records(path, (r for r in records if r["split"] == split))
    paths["card"] = out / "card.json"
    paths["card"].write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    paths["card_md"] = out / "card.md"
    paths["card_md"].write_text(card_markdown(card), encoding="utf-8")
    return paths


def build_mixture(
    cfg: MixtureConfig,
    out_dir: str | Path,
    *,
    embedder: Embedder | None = None,
    generator: Generator | None = None,
) -> dict:
    """Build the MIXTURE files from the configured seeds into `out_dir`; returns the card.

    The embedder and the degrader default to the configured ones (none when
    `cross_topic_fraction` is 0 or no `degrader` is set).
    """
    seeds, seed_report = load_seeds(cfg, Path(out_dir) / REJECTS_FILE)
    if embedder is None and cfg.cross_topic_fraction > 0:
        embedder = load_pair_embedder(cfg.embedder)
    if generator is None and cfg.degrader is not None:
        from lmmixup.backends import load_generator
        from lmmixup.io.cache import CallCache

        generator = load_generator(cfg.degrader, CallCache())
    result = make_records(seeds, cfg, embedder, generator)
    card = make_card(result, seed_report, len(seeds), cfg)
    write_mixture(out_dir, result.records, card)
    return card

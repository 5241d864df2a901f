"""The MIXTURE dataset builder: the distiller's training data (see `lmmixup.mixture.build`)."""

from lmmixup.mixture.build import build_mixture
from lmmixup.mixture.config import LEXICAL, REJECTS_FILE, SPLITS, MixtureConfig
from lmmixup.mixture.neighbours import LexicalEmbedder

__all__ = [
    "LEXICAL",
    "REJECTS_FILE",
    "SPLITS",
    "LexicalEmbedder",
    "MixtureConfig",
    "build_mixture",
]

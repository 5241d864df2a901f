"""Model backends behind small interfaces, chosen by config (`backend: hf | openai | vllm`)."""

from __future__ import annotations

from collections.abc import Callable

from lmmixup.backends.base import CachedGenerator, Generation, Generator, GenParams
from lmmixup.config import BackendConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.cache import CallCache


def _load_hf(cfg: BackendConfig) -> Generator:
    from lmmixup.backends.hf import HFChatModel

    return HFChatModel(cfg.model, dtype=cfg.dtype, batch_size=cfg.batch_size, device=cfg.device)


def _load_openai(cfg: BackendConfig) -> Generator:
    from lmmixup.backends.openai_chat import load

    return load(cfg)


def _load_vllm(cfg: BackendConfig) -> Generator:
    from lmmixup.backends.vllm_local import VLLMChatModel

    return VLLMChatModel(
        cfg.model,
        dtype=cfg.dtype,
        tensor_parallel_size=cfg.tensor_parallel_size,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        max_model_len=cfg.max_model_len,
    )


LOADERS: dict[str, Callable[[BackendConfig], Generator]] = {
    "hf": _load_hf,
    "openai": _load_openai,
    "vllm": _load_vllm,
}


def load_generator(cfg: BackendConfig, cache: CallCache | None = None) -> Generator:
    """The configured generator, wrapped in the call cache when one is given."""
    try:
        loader = LOADERS[cfg.backend]
    except KeyError:
        raise LmmixupError(
            f"backend '{cfg.backend}' is not available here; have: {', '.join(LOADERS)}"
        ) from None
    generator = loader(cfg)
    return CachedGenerator(generator, cache) if cache is not None else generator


__all__ = ["CachedGenerator", "Generation", "GenParams", "Generator", "LOADERS", "load_generator"]

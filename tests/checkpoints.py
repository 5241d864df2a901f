"""Comparing a trained checkpoint with the model it started from."""

from __future__ import annotations

from pathlib import Path


def changed_weights(base: Path, trained: Path) -> list[str]:
    """Names of the tensors that differ between two plain HF checkpoints with the same tensors."""
    from safetensors.torch import load_file

    before = load_file(base / "model.safetensors")
    after = load_file(trained / "model.safetensors")
    assert before.keys() == after.keys()
    return [name for name in before if not (before[name] == after[name]).all()]

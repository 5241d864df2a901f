"""Where models run: `auto` picks a CUDA GPU, then Apple's MPS, then the CPU."""

from __future__ import annotations

from lmmixup.errors import LmmixupError


def resolve_device(name: str = "auto") -> str:
    """The torch device for a configured `device`; a GPU that is asked for but absent is an
    error, not a silent fall back to the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise LmmixupError(
            f"device {name}: torch {torch.__version__} sees no such device on this machine; "
            "set the device to auto (GPU when present, else CPU) or cpu"
        )
    return name

"""lmmixup: instruction distillation with LM-Mixup."""

__version__ = "0.1.0"

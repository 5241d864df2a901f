"""A chat model's prompt text: its tokenizer's chat template, the generation prompt, then the
assistant turn's pre-fill. One rendering for the local backends, the Ray vLLM route, the
plan's token counts and the training examples."""

from __future__ import annotations

from typing import Any

from lmmixup.backends.base import Messages
from lmmixup.io.assets import resolve_model


def render_chat(tokenizer: Any, messages: Messages, assistant_prefix: str = "") -> str:
    """The chat-formatted prompt text, ready for the model's reply (optionally pre-filled)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + assistant_prefix


def load_chat_tokenizer(model: str) -> Any:
    """The tokenizer (with its chat template) of `model`, without loading the model."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(model))

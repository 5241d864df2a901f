"""In-process vLLM generation: `backend: vllm` (a GPU machine with the `vllm` extra installed).

Same contract as the other generators: chat-templated prompts (optionally pre-filled), greedy
by default, the reply's text ending before the first stop string, `finish_reason` stop (a stop
string, from vLLM's `stop_reason`), eos or length. For a remote GPU, `vllm serve MODEL` plus
`backend: openai` does the same job.
"""

from __future__ import annotations

from lmmixup.backends.base import Generation, GenParams, Messages
from lmmixup.backends.chat import render_chat
from lmmixup.errors import LmmixupError
from lmmixup.io.assets import model_fingerprint, resolve_model

INSTALL_HINT = (
    "backend 'vllm' needs the vllm package and a GPU: pip install 'lmmixup[vllm]'; "
    "without one, run `vllm serve MODEL` elsewhere and use backend: openai"
)


class VLLMChatModel:
    """A model loaded into vLLM once; every `generate` call is one batched vLLM request: the
    stage's whole batch (`batch_size`, 1024 prompts by default for this backend), which vLLM
    schedules over its KV cache itself.

    `tensor_parallel_size`, `gpu_memory_utilization` and `max_model_len` go to `vllm.LLM`
    as they are (None: vLLM's default, the model's own context length).
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        *,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise LmmixupError(INSTALL_HINT) from None
        self._vllm = vllm
        self.name = model
        path = resolve_model(model)
        self.fingerprint = model_fingerprint(path) + f"|vllm|{dtype}"
        self.llm = vllm.LLM(
            model=path,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def render(self, messages: Messages, assistant_prefix: str = "") -> str:
        return render_chat(self.tokenizer, messages, assistant_prefix)

    def generate(self, prompts: list[Messages], params: GenParams) -> list[Generation]:
        """Reply to each message list; stops at EOS, a stop string, or max_new_tokens."""
        sampling = self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            stop=list(params.stop),
            seed=params.seed,
        )
        texts = [self.render(messages, params.assistant_prefix) for messages in prompts]
        outputs = self.llm.generate(texts, sampling, use_tqdm=False)
        return [self._generation(output, params) for output in outputs]

    @staticmethod
    def _generation(output, params: GenParams) -> Generation:
        """One vLLM output as a Generation; `stop_reason` is the stop string that ended it,
        None at end-of-sequence, a token id for the model's other end-of-sequence tokens."""
        best = output.outputs[0]
        stop = best.stop_reason if best.stop_reason in params.stop else None
        reason = best.finish_reason
        if reason == "stop":
            reason = "stop" if stop is not None else "eos"
        return Generation(
            params.assistant_prefix + best.text,
            reason,
            len(best.token_ids),
            len(output.prompt_token_ids),
            stop_string=stop,
        )

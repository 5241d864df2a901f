"""A stand-in for ray.data.llm's vLLM engine (vllm cannot be installed here), and a scripted
`backend: vllm` generator that writes the same replies, for the local executor.

The "model" writes, for a prompt, the reply of the first SCRIPT key the prompt contains
(tokens are the reply's space-separated words). `written` plays out the decoding as vLLM
does: it stops at the first stop string (kept in the text only with
`include_stop_str_in_output`, as the engine stage returns it), else after `max_tokens`
tokens, else at the end of the reply (end-of-sequence). A reply of FAIL is an engine error
on that row. The engine stage is a `StatefulStageUDF` behind ray.data.llm's real `Processor`
(same input keys: `prompt`, `sampling_params`; same output columns: `generated_text`,
`num_generated_tokens`, `num_input_tokens`, `__inference_error__` with
`should_continue_on_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmmixup.backends.base import Generation, GenParams

FAIL = "<<engine error>>"


def reply_for(script: Mapping[str, str], text: str) -> str:
    """The scripted reply for a prompt (its text, or its messages' contents)."""
    return next(reply for key, reply in script.items() if key in text)


def written(reply: str, max_tokens: int, stops, keep_stop: bool) -> tuple[str, int, str | None]:
    """(text, tokens, stop string or None) of a model writing `reply` under these settings."""
    ends = [(reply.find(stop) + len(stop), stop) for stop in stops if stop and stop in reply]
    if ends:
        end, stop = min(ends)
        tokens = len(reply[:end].split(" "))
        if tokens <= max_tokens:
            return (reply[:end] if keep_stop else reply[: end - len(stop)]), tokens, stop
    words = reply.split(" ")
    return " ".join(words[:max_tokens]), min(len(words), max_tokens), None


class ScriptedVLLM:
    """`backend: vllm` for the local executor: the same replies, as `VLLMChatModel` returns them."""

    def __init__(self, model: str, script: Mapping[str, str]):
        self.name = self.fingerprint = model
        self.script = script

    def generate(self, prompts: list[list[dict]], params: GenParams) -> list[Generation]:
        out = []
        for messages in prompts:
            reply = reply_for(self.script, " ".join(m["content"] for m in messages))
            if reply == FAIL:
                out.append(Generation("", "error", error="engine error"))
                continue
            text, tokens, stop = written(reply, params.max_new_tokens, params.stop, False)
            reason = "stop" if stop else ("length" if tokens >= params.max_new_tokens else "eos")
            out.append(Generation(params.assistant_prefix + text, reason, tokens, 7, None, stop))
        return out


def _engine_udf():
    from ray.llm._internal.batch.stages.base import StatefulStageUDF

    class ScriptedEngineUDF(StatefulStageUDF):
        """The engine stage's UDF: one output row per input row, as vLLMEngineStageUDF."""

        def __init__(self, data_column, expected_input_keys, script):
            super().__init__(data_column, expected_input_keys)
            self.script = script

        async def udf(self, batch):
            for row in batch:
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], **self.reply(row)}

        def reply(self, row: dict[str, Any]) -> dict[str, Any]:
            prompt, params = row["prompt"], row["sampling_params"]
            reply = reply_for(self.script, prompt)
            if reply == FAIL:
                return {
                    "prompt": prompt,
                    "num_input_tokens": 0,
                    "generated_text": "",
                    "num_generated_tokens": 0,
                    "__inference_error__": "RuntimeError: boom",
                }
            stops = [] if params["stop"] is None else list(params["stop"])
            keep = bool(params["include_stop_str_in_output"])
            text, tokens, _ = written(reply, int(params["max_tokens"]), stops, keep)
            return {
                "prompt": prompt,
                "num_input_tokens": len(prompt.split(" ")),
                "generated_text": text,
                "num_generated_tokens": tokens,
                "__inference_error__": "",
            }

    return ScriptedEngineUDF


def standin_processor(script: Mapping[str, str], sent: list, drop: str | None = None):
    """A replacement for `ray_llm.engine_processor`: ray.data.llm's real `Processor` (built
    from the real `vLLMEngineProcessorConfig` of our settings) with the scripted engine stage;
    notes each input row's prompt in `sent`; drops the output rows whose text contains `drop`."""

    def build(config: dict, postprocess):
        import ray.data
        from ray.data.llm import vLLMEngineProcessorConfig
        from ray.llm._internal.batch.processor.base import Processor
        from ray.llm._internal.batch.stages.base import StatefulStage

        settings = vLLMEngineProcessorConfig(**config)
        replicas = settings.get_concurrency(autoscaling_enabled=False)
        engine = StatefulStage(
            fn=_engine_udf(),
            fn_constructor_kwargs={"script": dict(script)},
            map_batches_kwargs={
                "compute": ray.data.ActorPoolStrategy(**replicas),
                "num_cpus": 0.25,
            },
        )
        processor = Processor(settings, [engine], postprocess=postprocess)

        def run(dataset):
            sent.extend(row["prompt"] for row in dataset.take_all())
            out = processor(dataset)
            if drop is None:
                return out
            return out.filter(lambda row: drop not in (row.get("generated_text") or ""))

        return run

    return build

"""`executor.vllm_processor`: a stage's vLLM calls through ray.data.llm's vLLM processor.

With `--executor ray` and `executor.vllm_processor: true`, a `RequestStage` whose model is
`backend: vllm` (the distiller, the generate-mode judge) does not run on `StageWorker`
actors. The driver opens the stage's CPU half (`open_for_replies`: the distiller's embedder
and member index; never the model), asks it for every record's requests, renders each
prompt with the model's tokenizer exactly as `backend: vllm` does (`render_chat`: chat
template, generation prompt, then the pre-fill), and sends the rows through
`ray.data.llm`'s processor: `executor.actors` vLLM engine replicas (data parallel, each with
`tensor_parallel_size` GPUs), continuous batching inside each. Ray's chat-template, tokenize
and detokenize stages are off: the engine tokenizes the text itself (as `vllm.LLM` does),
and its own text is kept (Ray's detokenize stage would decode every generated token again,
stop string included).

The engine's output row has no finish reason, so the requests ask vLLM to keep the stop
string in the text (`include_stop_str_in_output`) and the reply is read from it
(`generation_of`): text ending in one of the request's stop strings -> `stop` (that string
cut off and recorded); else `num_generated_tokens` >= max_tokens -> `length` (also when the
last of those tokens was end-of-sequence: the row cannot tell); else `eos`. A row the
engine failed on (`__inference_error__`) and a request whose row never came back are
`error` replies: the stage records them as failures, retried on the next run.

The replies are grouped per record on the driver; a record is completed (`complete`) and
written by the same `ResultWriter` as soon as all its replies are in, in input order. Resume
is the executor's (`done_ids`: records already done are not sent). The call cache is not
used on this route, and the request cap (`max_requests`) is a server backend's, not vLLM's.
UNVERIFIED against a real vLLM on a GPU: the tests run a stand-in engine stage
(`engine_processor` is the seam) on a local Ray cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmmixup.backends.base import Generation, GenParams
from lmmixup.backends.chat import load_chat_tokenizer, render_chat
from lmmixup.config import BackendConfig, ExecutorConfig
from lmmixup.errors import ConfigError
from lmmixup.io.assets import resolve_model
from lmmixup.runtime.executor import ResultWriter
from lmmixup.runtime.requests import RequestStage

RECORD, REQUEST = "lmmixup_record", "lmmixup_request"
"""The columns saying which record (its place in the driver's list) and which of its requests a row is."""
INFERENCE_ERROR = "__inference_error__"
"""The column ray.data.llm fills with the engine's error on a row it failed on."""
REPLY_COLUMNS = ("generated_text", "num_generated_tokens", "num_input_tokens")
NO_REPLY = "no reply came back from the vLLM processor for this request"
MAX_BLOCKS = 200


def routed_backend(settings: ExecutorConfig, stage: Any) -> BackendConfig | None:
    """The vllm model a stage's requests go to through the processor; None: the stage runs
    on the actors (the route is off, or the stage's work is not plain vllm generation)."""
    if not settings.vllm_processor or not isinstance(stage, RequestStage):
        return None
    backend = stage.llm_backend()
    return backend if backend is not None and backend.backend == "vllm" else None


def sampling_params(params: GenParams) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments for a request's decoding settings."""
    return {
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "repetition_penalty": params.repetition_penalty,
        "stop": list(params.stop),
        "seed": params.seed,
        "include_stop_str_in_output": True,
    }


def generation_of(row: dict[str, Any] | None, params: GenParams) -> Generation:
    """One engine output row as a Generation (module doc); None: the row never came back."""
    if row is None:
        return Generation("", "error", error=NO_REPLY)
    if row.get(INFERENCE_ERROR):
        return Generation("", "error", error=f"vLLM processor: {row[INFERENCE_ERROR]}")
    text, tokens = row["generated_text"], int(row["num_generated_tokens"])
    stop = next((s for s in params.stop if s and text.endswith(s)), None)
    if stop is not None:
        text, reason = text[: -len(stop)], "stop"
    else:
        reason = "length" if tokens >= params.max_new_tokens else "eos"
    return Generation(
        params.assistant_prefix + text,
        reason,
        tokens,
        int(row["num_input_tokens"]),
        stop_string=stop,
    )


def reply_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The processor's postprocess: the row's place and the engine's reply, nothing else."""
    return {key: row[key] for key in (RECORD, REQUEST, *REPLY_COLUMNS)}


def processor_config(settings: ExecutorConfig, backend: BackendConfig) -> dict[str, Any]:
    """The `vLLMEngineProcessorConfig` fields for a vllm backend's settings."""
    engine: dict[str, Any] = {
        "dtype": backend.dtype,
        "tensor_parallel_size": backend.tensor_parallel_size,
        "gpu_memory_utilization": backend.gpu_memory_utilization,
    }
    if backend.max_model_len is not None:
        engine["max_model_len"] = backend.max_model_len
    config: dict[str, Any] = {
        "model_source": resolve_model(backend.model),
        "engine_kwargs": engine,
        "concurrency": (settings.actors, settings.actors),
        "chat_template_stage": False,
        "tokenize_stage": False,
        "detokenize_stage": False,
        "should_continue_on_error": True,
    }
    if settings.batch_size is not None:
        config["batch_size"] = settings.batch_size
    return config


def engine_processor(config: dict[str, Any], postprocess: Callable) -> Callable:
    """ray.data.llm's vLLM processor (a Dataset -> Dataset callable) for `config`."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as exc:
        raise ConfigError(
            "executor.vllm_processor needs ray.data.llm (pip install 'lmmixup[ray]'); "
            "or set executor.vllm_processor: false"
        ) from exc
    return build_processor(vLLMEngineProcessorConfig(**config), postprocess=postprocess)


class _Replies:
    """The replies of the records in flight: filled row by row, each record completed and
    written (in input order) once all its replies are in."""

    def __init__(self, stage: RequestStage, todo: list, asked: list, writer: ResultWriter):
        self.stage, self.todo, self.asked, self.writer = stage, todo, asked, writer
        self.rows: list[list[dict | None]] = [[None] * len(requests) for requests in asked]
        self.missing = [len(requests) for requests in asked]
        self.next = 0  # the first record not written yet
        self.usage = {"requests": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def add(self, row: dict[str, Any]) -> None:
        record, index = int(row[RECORD]), int(row[REQUEST])
        # a row Ray sent twice counts once (its record may be written already)
        if record >= self.next and self.rows[record][index] is None:
            self.rows[record][index] = row
            self.missing[record] -= 1

    def write_ready(self, everything: bool = False) -> None:
        """Complete and write the records from `next` on whose replies are all in (all of
        them with `everything`: a reply still missing is then an error reply)."""
        end = self.next
        while end < len(self.todo) and (everything or not self.missing[end]):
            end += 1
        if end == self.next:
            return
        places = range(self.next, end)
        replies = [
            [
                generation_of(row, request.params)
                for row, request in zip(self.rows[i], self.asked[i], strict=True)
            ]
            for i in places
        ]
        for generations in replies:
            for reply in generations:
                self.usage["requests"] += 1
                self.usage["failures"] += not reply.ok
                self.usage["prompt_tokens"] += reply.prompt_tokens
                self.usage["completion_tokens"] += reply.completion_tokens
        results = self.stage.complete([self.todo[i][1] for i in places], replies)
        self.writer.write(
            [(self.todo[i][0], {"id": self.todo[i][1]["id"]}) for i in places], results
        )
        for i in places:
            self.rows[i] = []
        self.next = end


def run_route(
    settings: ExecutorConfig,
    stage: RequestStage,
    backend: BackendConfig,
    todo: list[tuple[int, dict]],
    writer: ResultWriter,
) -> dict[str, Any]:
    """Run `stage` over the numbered records `todo` through the processor (module doc),
    writing with `writer`; returns the stage's report with the route's `usage`."""
    stage.open_for_replies()
    try:
        usage = _send(settings, stage, backend, todo, writer)
    finally:
        report = stage.close()
    return {**report, "usage": usage}


def _send(
    settings: ExecutorConfig,
    stage: RequestStage,
    backend: BackendConfig,
    todo: list[tuple[int, dict]],
    writer: ResultWriter,
) -> dict[str, int]:
    """Every record's requests through the processor, each record written once its
    replies are in; the requests' usage."""
    import ray.data

    asked = stage.requests([record for _, record in todo])
    replies = _Replies(stage, todo, asked, writer)
    rows = _rows(asked, backend)
    replies.write_ready()  # records that ask nothing (e.g. incoherent clusters)
    if rows:
        size = settings.batch_size or 32
        blocks = max(1, min(len(rows) // size + 1, MAX_BLOCKS))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        processor = engine_processor(processor_config(settings, backend), reply_columns)
        for batch in processor(dataset).iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                replies.add(row)
            replies.write_ready()
    replies.write_ready(everything=True)
    return replies.usage


def _rows(asked: list, backend: BackendConfig) -> list[dict[str, Any]]:
    """The processor's input: one row per request, its prompt rendered as backend vllm does."""
    if not any(asked):
        return []
    tokenizer = load_chat_tokenizer(backend.model)
    return [
        {
            RECORD: record,
            REQUEST: index,
            "prompt": render_chat(tokenizer, request.messages, request.params.assistant_prefix),
            "sampling_params": sampling_params(request.params),
        }
        for record, requests in enumerate(asked)
        for index, request in enumerate(requests)
    ]

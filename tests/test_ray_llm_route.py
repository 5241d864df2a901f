"""`executor.vllm_processor`: distill and rate through ray.data.llm's vLLM processor, with a
stand-in engine stage (vllm cannot be installed here) on a local Ray: the local executor's
outputs, finish reasons read from the engine's text, resume, failures recorded and retried,
and the real processor built from our settings. No Ray process is left afterwards."""

from __future__ import annotations

import os
import time

import pytest
import vllm_engine_standin
from test_distill import GOOD, POOL, ConstantEmbedder
from test_ray_executor import RAY_DAEMONS, _processes
from vllm_engine_standin import FAIL, ScriptedVLLM, standin_processor

import lmmixup.backends as backends
from lmmixup.backends.base import GenParams
from lmmixup.backends.chat import load_chat_tokenizer, render_chat
from lmmixup.config import DistillConfig, ExecutorConfig, RateConfig
from lmmixup.errors import ConfigError
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.runtime.executors import using
from lmmixup.runtime.ray_llm import (
    NO_REPLY,
    generation_of,
    processor_config,
    routed_backend,
    sampling_params,
)
from lmmixup.stages.distill import DistillStage, distill_clusters
from lmmixup.stages.judge import JudgeStage, judge_messages
from lmmixup.stages.rate import judge_records

ray = pytest.importorskip("ray")
from lmmixup.runtime.ray_executor import RayExecutor  # noqa: E402

TAIL = "\nQ: and on it runs"
SCRIPT = {  # the member (or rated) text a prompt contains -> what the model writes
    "capital of France": GOOD.removeprefix("<think>") + TAIL,  # continues the pre-fill
    "Name a prime": "I am not sure what to do.",  # end of sequence, no answer
    "Spell cat": " ".join(["on"] * 300),  # runs out of tokens
    "Spell fish": FAIL,  # the engine fails on it
    "[[good]]": '{"rarity": 4, "complexity": 6, "informativeness": 7, "overall": 8}',
    "[[bad]]": "I would rather not rate this.",
}
MORE_POOL = [
    {"id": "m7", "prompt": "Spell fish.", "completion": "F-I-S-H", "source": "t"},
    {"id": "m8", "prompt": "Spell fowl.", "completion": "F-O-W-L", "source": "t"},
    {"id": "m9", "prompt": "Spell bird.", "completion": "B-I-R-D", "source": "t"},
    {"id": "m10", "prompt": "Spell bear.", "completion": "B-E-A-R", "source": "t"},
]
CLUSTERS = [
    {"cluster_id": "c1", "source": "s", "member_ids": ["m1", "m2"], "size": 2, "cohesion": 0.7},
    {"cluster_id": "c2", "source": "s", "member_ids": ["m3", "m4"], "size": 2, "cohesion": 0.6},
    {"cluster_id": "c3", "source": "t", "member_ids": ["m5", "m6"], "size": 2, "cohesion": 0.6},
    {"cluster_id": "c4", "source": "t", "member_ids": ["m9", "m10"], "coherent": False},
    {"cluster_id": "c5", "source": "t", "member_ids": ["m7", "m8"], "size": 2, "cohesion": 0.6},
]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray of its own on this machine; afterwards, none of its processes left."""
    before = set(_processes(*RAY_DAEMONS))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=4, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False
    )
    ray.cloudpickle.register_pickle_by_value(vllm_engine_standin)  # tests/ is not on Ray's path
    ours = set(_processes(*RAY_DAEMONS)) - before
    yield
    ray.shutdown()
    deadline = time.time() + 30
    while ours & set(_processes(*RAY_DAEMONS)) and time.time() < deadline:
        time.sleep(0.2)
    assert not ours & set(_processes(*RAY_DAEMONS)), "Ray processes left behind"


@pytest.fixture
def vllm_model(monkeypatch, smollm2_tokenizer_dir):
    """A `backend: vllm` model: the scripted one for the local executor; the route must
    never load it (only its tokenizer, to render the prompts)."""
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    monkeypatch.setitem(backends.LOADERS, "vllm", lambda cfg: ScriptedVLLM(cfg.model, SCRIPT))
    return {"backend": "vllm", "model": str(smollm2_tokenizer_dir)}


def _route(monkeypatch, script=SCRIPT, drop=None) -> list[str]:
    """Use the stand-in processor; the prompts it is sent go into the returned list."""
    sent: list[str] = []
    monkeypatch.setattr(
        "lmmixup.runtime.ray_llm.engine_processor", standin_processor(script, sent, drop)
    )
    never = lambda cfg: pytest.fail("the route loaded the vllm model on the driver")  # noqa: E731
    monkeypatch.setitem(backends.LOADERS, "vllm", never)
    return sent


RAY = ExecutorConfig(kind="ray", vllm_processor=True, actors=1, batch_size=2)


def _distill(tmp_path, cfg, name):
    out, rejects = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.rejects.jsonl"
    counts = distill_clusters(
        tmp_path / "clusters.jsonl", tmp_path / "pool.jsonl", out, rejects, cfg
    )
    return counts, read_records(out), read_records(rejects)


def test_distill_through_the_processor_gives_the_local_outputs_and_resumes(
    local_ray, vllm_model, tmp_path, monkeypatch
):
    write_records(tmp_path / "pool.jsonl", POOL + MORE_POOL)
    write_records(tmp_path / "clusters.jsonl", CLUSTERS)
    cfg = DistillConfig(
        generator=vllm_model, answer_prefix="<think>", max_new_tokens=200, candidates=2
    )
    _, local_out, local_bad = _distill(tmp_path, cfg, "local")
    sent = _route(monkeypatch)
    with using(RayExecutor(RAY)):
        counts, out, bad = _distill(tmp_path, cfg, "ray")

    assert out == local_out and [r["cluster_id"] for r in out] == ["c1"]
    assert out[0]["finish_reason"] == "stop" and out[0]["raw_output"] == GOOD.removesuffix(
        "</answer>"
    )
    assert out[0]["candidates"] == 2
    reasons = {r["raw"]["cluster_id"]: r["reason"] for r in bad}
    assert reasons == {
        "c2": "unparsable",
        "c3": "truncated",
        "c4": "incoherent",
        "c5": "generation_error",
    }
    assert [r["raw"]["finish_reason"] for r in bad if "finish_reason" in r["raw"]] == [
        "eos",
        "length",
        "error",
    ]
    failed = bad[-1]["raw"].pop("error")
    assert failed.startswith("vLLM processor: ") and local_bad[-1]["raw"].pop("error")
    assert bad == local_bad  # the same records and rejects, in the same order
    # two candidates of each of the four coherent clusters; rendered as backend vllm does
    tokenizer = load_chat_tokenizer(vllm_model["model"])
    assert len(sent) == 8 and all(prompt.endswith("<think>") for prompt in sent)
    stage = DistillStage(cfg, tmp_path / "pool.jsonl")
    stage.open_for_replies()
    first = stage.requests([CLUSTERS[0]])[0][0]
    assert sent[0] == render_chat(tokenizer, first.messages, "<think>")
    assert counts["distiller_usage"] == {
        "requests": 8,
        "failures": 2,
        "prompt_tokens": counts["distiller_usage"]["prompt_tokens"],
        "completion_tokens": 2 * (len(GOOD.split(" ")) + 7 + 200),
    }

    again = _route(monkeypatch, {**SCRIPT, "Spell fish": "Not today."})
    with using(RayExecutor(RAY)):
        counts, out, bad = _distill(tmp_path, cfg, "ray")
    assert (counts["already_done"], counts["written"], counts["rejected"]) == (4, 0, 1)
    assert len(again) == 2 and all("Spell fish" in prompt for prompt in again)
    assert sorted(r["reason"] for r in bad).count("generation_error") == 0
    nothing = _route(monkeypatch)
    with using(RayExecutor(RAY)):
        counts, _, _ = _distill(tmp_path, cfg, "ray")
    assert counts["already_done"] == 5 and nothing == []


def _pool(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Question {i} {tag}",
            "completion": f"Answer {i}.",
            "source": "s",
        }
        for i, tag in enumerate(["[[good]]", "[[bad]]", "[[good]]", "[[good]]", "[[bad]]"])
    ]
    write_records(tmp_path / "pool.jsonl", rows)
    return rows


def test_rating_through_the_processor_gives_the_local_ratings(
    local_ray, vllm_model, tmp_path, monkeypatch
):
    rows = _pool(tmp_path)
    cfg = RateConfig(judge=vllm_model, mode="generate", attempts=1)
    pool = tmp_path / "pool.jsonl"
    judge_records(pool, tmp_path / "local.jsonl", tmp_path / "local.rejects.jsonl", cfg, None)
    sent = _route(monkeypatch)
    with using(RayExecutor(RAY)):
        counts = judge_records(
            pool, tmp_path / "ray.jsonl", tmp_path / "ray.rejects.jsonl", cfg, None
        )
    rated = read_records(tmp_path / "ray.jsonl")
    assert rated == read_records(tmp_path / "local.jsonl")
    assert [r["rating"] is None for r in rated] == [False, True, False, False, True]
    assert rated[1]["rating_error"].startswith("unusable judge reply")
    assert counts["judge_mode"] == "generate" and counts["judge_usage"]["requests"] == 5
    tokenizer = load_chat_tokenizer(vllm_model["model"])
    assert sent == [render_chat(tokenizer, judge_messages(row, cfg)) for row in rows]


def test_a_reply_that_never_comes_back_is_a_recorded_failure(
    local_ray, vllm_model, tmp_path, monkeypatch
):
    _pool(tmp_path)
    cfg = RateConfig(judge=vllm_model, mode="generate")
    _route(monkeypatch, drop="overall")  # every good rating is lost on the way back
    out = tmp_path / "rated.jsonl"
    with using(RayExecutor(RAY)):
        judge_records(tmp_path / "pool.jsonl", out, tmp_path / "rejects.jsonl", cfg, None)
    errors = [r["rating_error"] for r in read_records(out)]
    assert errors[0] == errors[2] == errors[3] == f"judge call failed: {NO_REPLY}"
    assert errors[1].startswith("unusable judge reply")


def test_the_processor_is_built_from_our_settings(local_ray, smollm2_tokenizer_dir):
    """ray.data.llm's real builder accepts what we give it (building needs no vllm; running does)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from lmmixup.config import BackendConfig
    from lmmixup.runtime.ray_llm import reply_columns

    backend = BackendConfig(
        backend="vllm", model=str(smollm2_tokenizer_dir), tensor_parallel_size=2, max_model_len=4096
    )
    settings = RAY.model_copy(update={"actors": 3})
    config = vLLMEngineProcessorConfig(**processor_config(settings, backend))
    processor = build_processor(config, postprocess=reply_columns)
    assert processor.list_stage_names() == ["vLLMEngineStage"]  # ours render and keep the text
    engine = processor.get_stage_by_name("vLLMEngineStage")
    asked = {
        "dtype": "auto",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.9,
        "max_model_len": 4096,
        "task_type": "generate",
    }
    engine_kwargs = engine.fn_constructor_kwargs["engine_kwargs"]
    assert {key: engine_kwargs[key] for key in asked} == asked  # Ray adds its own (TP backend)
    assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
    compute = engine.map_batches_kwargs["compute"]
    assert (compute.min_size, compute.max_size, config.batch_size) == (3, 3, 2)


PARAMS = GenParams(max_new_tokens=10, stop=("</answer>", "\n\nQ:"), assistant_prefix="<a>")


@pytest.mark.parametrize(
    ("text", "tokens", "reason", "stop", "kept"),
    [
        ("Q: x\nA: y\n</answer>", 6, "stop", "</answer>", "<a>Q: x\nA: y\n"),
        ("Q: x\nA: y\n\nQ:", 6, "stop", "\n\nQ:", "<a>Q: x\nA: y"),
        ("Q: x A: y and on", 10, "length", None, "<a>Q: x A: y and on"),
        ("Q: x A: y", 4, "eos", None, "<a>Q: x A: y"),
    ],
)
def test_the_finish_reason_is_read_from_the_engines_text(text, tokens, reason, stop, kept):
    row = {"generated_text": text, "num_generated_tokens": tokens, "num_input_tokens": 30}
    reply = generation_of({**row, "__inference_error__": ""}, PARAMS)
    assert (reply.finish_reason, reply.stop_string, reply.text) == (reason, stop, kept)
    assert (reply.completion_tokens, reply.prompt_tokens, reply.ok) == (tokens, 30, True)


def test_failed_and_missing_rows_are_error_replies_and_stops_stay_in_the_text():
    failed = generation_of({"__inference_error__": "EngineDeadError: gone"}, PARAMS)
    assert (failed.finish_reason, failed.error) == (
        "error",
        "vLLM processor: EngineDeadError: gone",
    )
    assert generation_of(None, PARAMS).error == NO_REPLY
    asked = sampling_params(PARAMS)
    assert asked["include_stop_str_in_output"] is True and asked["stop"] == list(PARAMS.stop)
    assert (asked["max_tokens"], asked["seed"], asked["temperature"]) == (10, 0, 0.0)


def test_which_stages_take_the_route(tmp_path):
    vllm = {"backend": "vllm", "model": "some/model"}
    judge = JudgeStage(RateConfig(judge=vllm, mode="generate"))
    assert routed_backend(RAY, judge) == judge.cfg.judge
    assert routed_backend(RAY.model_copy(update={"vllm_processor": False}), judge) is None
    hf_logprob = JudgeStage(RateConfig(judge={"backend": "hf"}, mode="logprob"))
    assert routed_backend(RAY, hf_logprob) is None  # runs on the actors, as before
    server = DistillStage(DistillConfig(generator={"backend": "openai"}), tmp_path / "p.jsonl")
    assert routed_backend(RAY, server) is None
    with pytest.raises(ConfigError, match="rate.mode=logprob"):  # refused before any model loads
        RateConfig(judge=vllm, mode="logprob")

"""GPUs used when present: device resolution, dtypes, embedders per stage, GRPO's vLLM switch.

No GPU here: torch's CUDA queries are stubbed where a test needs to see the GPU branch; what
runs on a real GPU is bench/gpu_check.sh's job.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from lmmixup.backends import load_generator
from lmmixup.backends.device import resolve_device
from lmmixup.backends.hf import pick_dtype
from lmmixup.config import BackendConfig, ClusterConfig, DistillConfig, RateConfig, SelectConfig
from lmmixup.errors import ConfigError, LmmixupError


@pytest.fixture
def gpu(monkeypatch):
    """torch believes a CUDA GPU is present; the test sets whether it runs bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bf16 = {"supported": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16["supported"])
    return bf16


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_auto_picks_the_gpu_when_present_else_the_cpu(gpu, monkeypatch):
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"  # asked for: kept, GPU or not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def test_a_gpu_asked_for_but_absent_is_an_error_not_the_cpu(no_gpu):
    with pytest.raises(LmmixupError, match="device cuda: .*no such device.*auto"):
        resolve_device("cuda")


def test_dtype_auto_is_bf16_on_a_bf16_gpu_fp16_on_an_older_one(gpu, monkeypatch):
    assert pick_dtype("auto", "cuda") == torch.bfloat16
    gpu["supported"] = False
    assert pick_dtype("auto", "cuda") == torch.float16
    assert pick_dtype("auto") == torch.float16  # no device: where auto puts the model
    assert pick_dtype("float32", "cuda") == torch.float32  # an explicit dtype stands
    # the CPU keeps its own rule, even with a GPU in the machine
    monkeypatch.setattr("lmmixup.backends.hf._cpu_has_bf16", lambda: False)
    assert pick_dtype("auto", "cpu") == torch.float32


class _FakeSentenceTransformer:
    def __init__(self, path, device):
        self.path, self.device = path, device

    def get_embedding_dimension(self):
        return 4


def test_embedder_runs_on_the_resolved_device_with_a_gpu_sized_batch(gpu, monkeypatch):
    import sentence_transformers

    from lmmixup.backends.embed import CPU_BATCH, GPU_BATCH, SentenceEmbedder

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", _FakeSentenceTransformer)
    monkeypatch.setattr("lmmixup.backends.embed.resolve_model", lambda name: name)
    on_gpu = SentenceEmbedder("m")
    assert (on_gpu.model.device, on_gpu.batch_size) == ("cuda", GPU_BATCH)
    on_cpu = SentenceEmbedder("m", device="cpu")
    assert (on_cpu.model.device, on_cpu.batch_size) == ("cpu", CPU_BATCH)


@pytest.mark.parametrize("section", [RateConfig, ClusterConfig, DistillConfig, SelectConfig])
def test_every_embedding_section_has_an_operational_device_key(section):
    from lmmixup.config import result_config

    assert section().embed_device == "auto"
    assert section(embed_device="cpu").embed_device == "cpu"
    # where it runs does not change what it makes: a resumed stage may move to the GPU
    assert "embed_device" not in result_config(section(embed_device="cpu"))
    with pytest.raises(ValueError):
        section(embed_device="tpu")


def test_cluster_stage_asks_for_its_configured_device(tmp_path, monkeypatch):
    from lmmixup.io.jsonl import write_records
    from lmmixup.stages.cluster import cluster_file

    asked = []

    class Embedder:
        def encode(self, texts, description=None):
            import numpy as np

            return np.eye(len(texts), 8, dtype=np.float32)

    def load(name, device="auto"):
        asked.append((name, device))
        return Embedder()

    monkeypatch.setattr("lmmixup.stages.cluster.load_embedder", load)
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "completion": "c", "source": "s"} for i in range(4)]
    write_records(tmp_path / "low.jsonl", rows)
    cfg = ClusterConfig(min_size=2, max_size=2, mean_size=2, std_size=0, embed_device="cpu")
    cluster_file(tmp_path / "low.jsonl", tmp_path / "clusters.jsonl", cfg)
    assert asked == [("bundled:minilm", "cpu")]


def test_hf_backend_gets_the_configured_device(monkeypatch):
    made = []
    monkeypatch.setattr("lmmixup.backends.hf.HFChatModel", lambda *a, **kw: made.append(kw))
    load_generator(BackendConfig(backend="hf", device="cpu", dtype="float16"))
    assert made == [{"dtype": "float16", "batch_size": 16, "device": "cpu"}]


def test_hf_backend_on_the_cpu_keeps_float32_weights_there(tiny_llama, no_gpu, monkeypatch):
    from lmmixup.backends.hf import HFChatModel

    monkeypatch.setattr("lmmixup.backends.hf._cpu_has_bf16", lambda: False)
    model = HFChatModel(str(tiny_llama))
    parameter = next(model.model.parameters())
    assert (model.device, parameter.device.type, parameter.dtype) == ("cpu", "cpu", torch.float32)


def _grpo_config(**changes):
    from lmmixup.training.grpo import GRPOTrainConfig

    return GRPOTrainConfig(use_vllm=True, **changes)


def test_grpo_with_vllm_is_refused_where_vllm_or_a_gpu_is_missing(no_gpu, monkeypatch):
    from lmmixup.training.grpo import train_grpo

    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    # refused before the rewards, the data or the model load (none of them exists here)
    with pytest.raises(ConfigError, match=r"grpo.use_vllm: .*vllm package.*a CUDA GPU.*false"):
        train_grpo(_grpo_config(mixture="/nonexistent"))


def test_grpo_with_vllm_samples_colocated(gpu, monkeypatch):
    from lmmixup.training.grpo import vllm_arguments

    monkeypatch.setattr("importlib.util.find_spec", lambda name: SimpleNamespace(name=name))
    cfg = _grpo_config(
        vllm_gpu_memory_utilization=0.4, max_prompt_length=512, max_completion_length=128
    )
    assert vllm_arguments(cfg) == {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": 0.4,
        "vllm_tensor_parallel_size": 1,
        "vllm_max_model_length": 640,
    }
    assert vllm_arguments(cfg.model_copy(update={"use_vllm": False})) == {}

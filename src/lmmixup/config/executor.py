"""The `executor` section: where `lmmixup run` runs its per-record stages (local or Ray)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmmixup.config.base import OPERATIONAL, Section


class ExecutorConfig(Section):
    """Where per-record stages run; no stage's manifest records it (outputs are the same)."""

    kind: Literal["local", "ray"] = Field(
        "local",
        description="local: in this process; ray: per-record stages as Ray Data actor pools on a Ray cluster (pip install 'lmmixup[ray]').",
        json_schema_extra=OPERATIONAL,
    )
    address: str | None = Field(
        None,
        description="ray: the cluster's address as `ray start --head` prints it (e.g. 10.0.0.5:6379), or auto; null = $RAY_ADDRESS, else a Ray started on this machine for the run.",
        json_schema_extra=OPERATIONAL,
    )
    actors: int = Field(
        2,
        ge=1,
        description="ray: actors per per-record stage, each with its own copy of the model; a server backend's concurrency is split between them.",
        json_schema_extra=OPERATIONAL,
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="ray: records per batch sent to an actor; null = the stage's own batch size.",
        json_schema_extra=OPERATIONAL,
    )
    num_cpus: float = Field(
        1.0, ge=0, description="ray: CPUs each actor reserves.", json_schema_extra=OPERATIONAL
    )
    num_gpus: float | None = Field(
        None,
        ge=0,
        description="ray: GPUs each actor reserves; null = 1 when the cluster has GPUs, else 0 (set 0 for server backends on a GPU cluster).",
        json_schema_extra=OPERATIONAL,
    )
    max_restarts: int = Field(
        3,
        ge=0,
        description="ray: times a dead actor is restarted, and its batch retried, before the stage fails.",
        json_schema_extra=OPERATIONAL,
    )
    vllm_processor: bool = Field(
        False,
        description="ray: a stage whose model is backend vllm (distill, the generate-mode judge) sends its requests through ray.data.llm's vLLM processor (`actors` engine replicas with continuous batching; records written on the driver as before) instead of one vllm.LLM per actor; one judge attempt per run there. Needs vllm on the GPU nodes; unverified on a real GPU (docs/GUIDE.md 1.9).",
        json_schema_extra=OPERATIONAL,
    )

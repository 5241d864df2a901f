"""How a stage of `lmmixup run` declares itself: its name, config, inputs, outputs and body.

Each stage module holds its `StageSpec`; the pipeline only lists them in order and wires one
stage's outputs to the next one's inputs by the names declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmmixup.config import RunConfig, result_config
from lmmixup.runtime.runner import StageDir, StageResult, run_stage

Outputs = Mapping[str, Mapping[str, Path]]
"""The files earlier stages wrote: stage name -> output key -> path."""


@dataclass(frozen=True)
class StageSpec:
    """One stage of `lmmixup run`.

    `sections`: the run config sections the stage's manifest records (changing one redoes
    it). `reads`: the stage's name for each input -> "stage.key", an output of an earlier
    stage, in the order the manifest hashes them. `outputs`: key -> file name in the stage's
    folder. `run(stage_dir, cfg, inputs)` writes the outputs, `inputs` by the names of
    `reads`. `sources(cfg)`: inputs that come from the config instead (the import stage's
    files), hashed before the others.
    """

    name: str
    sections: tuple[str, ...]
    reads: Mapping[str, str]
    outputs: Mapping[str, str]
    run: Callable[[StageDir, RunConfig, dict[str, Path]], None]
    sources: Callable[[RunConfig], list[Path]] | None = None

    def resolve(self, earlier: Outputs) -> dict[str, Path]:
        """The stage's inputs by its own names, from the outputs of earlier stages."""
        inputs = {}
        for name, ref in self.reads.items():
            stage, _, key = ref.partition(".")
            inputs[name] = earlier[stage][key]
        return inputs

    def inputs(self, cfg: RunConfig, earlier: Outputs) -> list[Path]:
        """Every file the stage reads, in the order its manifest records them."""
        sources = self.sources(cfg) if self.sources is not None else []
        return [*sources, *self.resolve(earlier).values()]

    def body(self, stage_dir: StageDir, cfg: RunConfig, earlier: Outputs) -> None:
        """Run the stage in its folder, given the outputs of the stages before it."""
        self.run(stage_dir, cfg, self.resolve(earlier))


def run_specs(
    run_dir: Path, specs: Sequence[StageSpec], cfg: Any, force: bool
) -> tuple[list[StageResult], dict[str, dict[str, Path]]]:
    """Run the stages in order in `run_dir` (each skipped, resumed or redone by its
    manifest), wiring each stage's outputs to the next; their results and outputs."""
    outputs: dict[str, dict[str, Path]] = {}
    results: list[StageResult] = []
    for spec in specs:
        result = run_stage(
            run_dir,
            spec.name,
            inputs=spec.inputs(cfg, outputs),
            config={name: result_config(getattr(cfg, name)) for name in spec.sections},
            body=lambda stage_dir, spec=spec: spec.body(stage_dir, cfg, outputs),
            force=force,
            follow_inputs=True,
            outputs=spec.outputs.values(),  # folders among them are not recorded
        )
        outputs[spec.name] = {key: result.path / name for key, name in spec.outputs.items()}
        results.append(result)
    return results, outputs

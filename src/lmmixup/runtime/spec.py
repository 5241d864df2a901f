"""How a stage of `lmmixup run` declares itself: its name, config, inputs, outputs and body.

Each stage module holds its `StageSpec`; the pipeline only lists them in order and wires one
stage's outputs to the next one's inputs by the names declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmmixup.config import RunConfig
from lmmixup.runtime.runner import StageDir

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

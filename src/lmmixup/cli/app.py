"""The `lmmixup` command line: thin commands over the library. Heavy imports stay inside them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Instruction distillation with LM-Mixup: rate a pool, cluster its low-quality part, "
    "distill each cluster into one pair, and select a compact training set.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
data_app = typer.Typer(help="Import and inspect data.", no_args_is_help=True)
config_app = typer.Typer(help="Write and check configuration files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


def _register_subcommands() -> None:
    """Command groups that live in lmmixup.cli.commands (each keeps its heavy imports inside)."""
    from lmmixup.cli.commands.evaluate import eval_app
    from lmmixup.cli.commands.experiment import experiment_app
    from lmmixup.cli.commands.finetune import finetune_app
    from lmmixup.cli.commands.mixture import mixture_app
    from lmmixup.cli.commands.report import EPILOG as REPORT_EPILOG
    from lmmixup.cli.commands.report import report
    from lmmixup.cli.commands.rewards import rewards_app
    from lmmixup.cli.commands.train import train_app

    app.add_typer(mixture_app, name="mixture")
    app.add_typer(rewards_app, name="rewards")
    app.add_typer(train_app, name="train")
    app.add_typer(eval_app, name="eval")
    app.registered_commands += finetune_app.registered_commands  # finetune, decontaminate
    app.registered_commands += experiment_app.registered_commands
    app.command("report", epilog=REPORT_EPILOG)(report)


_register_subcommands()

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML file with this command's keys.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: KEY=VALUE (repeatable).")
]
log = logging.getLogger("lmmixup")
QUIET_LOGGERS = (
    "sentence_transformers",
    "faiss",
    "transformers",
    "huggingface_hub",
    "openai",
    "httpx",  # the openai client's HTTP library logs one INFO line per request;
    "httpx2",  # its name depends on the openai version
    "httpcore",
    "httpcore2",
)
"""Libraries whose logs show only warnings and errors unless --verbose."""


@app.callback()
def main_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging and full tracebacks.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")
    ] = False,
) -> None:
    from lmmixup import progress

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # libraries' own chatter (model loading, faiss builds, a line per request) only with -v
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
    progress.set_enabled(not quiet)
    _state["verbose"] = verbose


_state = {"verbose": False}


def _echo(message: str) -> None:
    typer.echo(message)


def _overrides(sets: list[str] | None, **flags: object) -> list[str]:
    """Dotted overrides from --set plus the command's own flags that were given."""
    import json

    given = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    return list(sets or []) + given


@data_app.command(
    "import",
    epilog="Examples:\n\n    lmmixup data import my_pool.jsonl -o pool.jsonl\n\n"
    "    lmmixup data import sharegpt gsm8k -o pool.jsonl --sample 500 --seed 1\n\n"
    "    lmmixup data import alpaca.json tulu.parquet -o pool.jsonl --max-completion-chars 4000\n\n"
    "    lmmixup data import my_pool.jsonl -o pool.jsonl --holdout-fraction 0.05  # + pool.heldout.jsonl",
)
def data_import(
    sources: Annotated[
        list[str],
        typer.Argument(
            help="Files (JSONL, JSON, Parquet, CSV), saved HF datasets, or built-in sources: sharegpt, gsm8k."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pool records (JSONL).")],
    rejects: Annotated[
        Path | None, typer.Option(help="Rejected rows (default: OUTPUT with .rejects.jsonl).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    reject_over_chars: Annotated[
        int | None, typer.Option(help="A text longer than this is a bad row [default 1,000,000].")
    ] = None,
    min_prompt_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a shorter prompt.")
    ] = None,
    max_prompt_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a longer prompt.")
    ] = None,
    min_completion_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a shorter completion.")
    ] = None,
    max_completion_chars: Annotated[
        int | None, typer.Option(help="Drop pairs with a longer completion.")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Keep a seeded random sample of N rows.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Keep at most the first N rows.")] = None,
    holdout_fraction: Annotated[
        float | None,
        typer.Option(help="Set aside this fraction of the rows as OUTPUT.heldout.jsonl."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for --sample and the hold-out.")] = None,
) -> None:
    """Read any supported input into pool records (id, prompt, completion, source, meta).

    The built-in `gsm8k` skips the rows the offline evaluation suite uses (lmmixup_gsm8k), so
    no training set can hold a test question.

    Accepted row formats: prompt/completion, Alpaca (instruction/input/output), ShareGPT
    (conversations with from/value), OpenAI/TULU messages (role/content), question/answer.
    Bad rows go to the rejects file with their file, line and reason; good rows are kept.
    """
    from lmmixup.config import ImportConfig, load_config
    from lmmixup.io.outputs import claim_outputs
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.import_pool import heldout_path, import_pool

    flags = dict(
        reject_over_chars=reject_over_chars,
        min_prompt_chars=min_prompt_chars,
        max_prompt_chars=max_prompt_chars,
        min_completion_chars=min_completion_chars,
        max_completion_chars=max_completion_chars,
        sample=sample,
        limit=limit,
        holdout_fraction=holdout_fraction,
        seed=seed,
    )
    cfg = load_config(ImportConfig, config, _overrides(sets, **flags))
    written = [output, rejects or rejects_beside(output)]
    written += [heldout_path(output)] if cfg.holdout_fraction else []
    with claim_outputs(sources, written, records=written):
        result = import_pool(sources, output, cfg, rejects)
    _echo(f"kept {result.kept:,} rows -> {result.output}")
    _echo(f"rejected {result.rejected:,} rows -> {result.rejects}")
    if result.heldout:
        _echo(f"held out {result.held_out:,} rows -> {result.heldout}")
    if result.filtered or result.dropped_by_limit:
        _echo(
            f"filtered by length {result.filtered:,}; left out by sample/limit {result.dropped_by_limit:,}"
        )
    if result.reserved_for_eval:
        _echo(f"skipped {result.reserved_for_eval:,} rows the evaluation suite uses")
    for reason, count in result.reject_reasons.most_common(5):
        _echo(f"  {count:,} x {reason}")


@config_app.command("init", epilog="Example:\n\n    lmmixup config init -o lmmixup.yaml")
def config_init(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the config.")
    ] = Path("lmmixup.yaml"),
    demo: Annotated[bool, typer.Option(help="Start from the bundled demo's sources.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Write a complete, commented default config for `lmmixup run`."""
    from lmmixup.config import RunConfig, to_yaml, validate
    from lmmixup.errors import LmmixupError
    from lmmixup.workflows.pipeline import demo_config

    if output.exists() and not overwrite:
        raise LmmixupError(f"{output} exists; pass --overwrite to replace it")
    cfg = validate(RunConfig, demo_config()) if demo else RunConfig()
    output.write_text(
        "# lmmixup run configuration. Every key is explained above it.\n" + to_yaml(cfg)
    )
    _echo(f"wrote {output}")


@config_app.command(
    "check",
    epilog="Examples:\n\n    lmmixup config check lmmixup.yaml\n\n"
    "    lmmixup config check my_experiment.yaml",
)
def config_check(
    path: Annotated[Path, typer.Argument(help="A run config, or an experiment config.")],
) -> None:
    """Validate a run config; unknown keys, bad values and settings that cannot work (missing
    or empty sources, a backend that cannot run the chosen mode) are named, one line each.

    A file with an `experiment:` section is checked as `lmmixup experiment` reads it: its arms,
    its fine-tune and evaluation options, and the held-out rows its tasks need.
    """
    from lmmixup.config import load_yaml
    from lmmixup.workflows.pipeline import check_run_config

    if "experiment" in load_yaml(path):
        from lmmixup.workflows.experiment import check_config, load_experiment_config

        run_cfg, exp = load_experiment_config(path, [])
        check_config(run_cfg, exp)
        check_run_config(run_cfg, str(path))
        _echo(f"{path}: ok (run sections and experiment section)")
        return
    from lmmixup.workflows.pipeline import load_run_config

    load_run_config(path, [])
    _echo(f"{path}: ok")


ForceOpt = Annotated[
    bool,
    typer.Option(help="Redo from scratch when the config or inputs changed, instead of refusing."),
]


def _file_stage(output: Path, name: str, inputs: list[Path], section, body, force: bool) -> dict:
    """Run a standalone command as a resumable stage whose manifest sits beside OUTPUT."""
    from lmmixup.config import result_config
    from lmmixup.runtime.runner import run_file_stage

    result = run_file_stage(
        output, name, inputs=inputs, config=result_config(section), body=body, force=force
    )
    if result.skipped:
        _echo(f"{output} is already complete for this config and input (use --force to redo it)")
    return result.manifest.get("counts", {})


@app.command(
    epilog="Examples:\n\n    lmmixup rate pool.jsonl -o rated.jsonl      # bundled SmolLM2, logprob mode\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --backend openai --base-url http://localhost:8000/v1 "
    "--model Qwen/Qwen2.5-7B-Instruct --concurrency 16 --max-requests 5000\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --propagate 0.1 --curate\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --method knn --library runs/x/rate/library"
)
def rate(
    pool: Annotated[Path, typer.Argument(help="Pool records (JSONL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rated records (JSONL).")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    backend: Annotated[str | None, typer.Option(help="Judge backend: hf | openai.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Judge model: path, bundled name, or server model name.")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="openai backend: server URL, e.g. http://localhost:8000/v1.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="openai backend: variable holding the key [OPENAI_API_KEY].")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="openai backend: requests in flight.")
    ] = None,
    max_requests: Annotated[
        int | None, typer.Option(help="openai backend: stop cleanly after this many requests.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="hf backend: prompts per forward pass.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="logprob (hf only; one forward pass) | generate | auto (logprob for hf, "
            "generate for a server) [auto]."
        ),
    ] = None,
    method: Annotated[str | None, typer.Option(help="judge | knn (score with --library).")] = None,
    library: Annotated[
        str | None, typer.Option(help="kNN-Bayes library folder for --method knn.")
    ] = None,
    propagate: Annotated[
        float | None, typer.Option(help="Judge this fraction; score the rest with kNN-Bayes.")
    ] = None,
    curate: Annotated[
        bool | None,
        typer.Option("--curate/--no-curate", help="Flag ratings their neighbourhood contradicts."),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Rate every sample with the rubric judge (rarity, complexity, informativeness, overall).

    A rating that fails is recorded as `rating: null` with `rating_error`, never as a default
    score; running the same command again retries only the failures and the unrated rest.
    """
    from lmmixup.config import RateConfig, load_config
    from lmmixup.io.cache import CallCache
    from lmmixup.io.validate import POOL_RECORD, check_file
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.judge import MAX_JUDGED_CHARS, TRUNCATED_KEY
    from lmmixup.stages.rate import rate_pool

    judge = {
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "concurrency": concurrency,
        "max_requests": max_requests,
        "batch_size": batch_size,
    }
    flags = {f"judge.{k}": v for k, v in judge.items()}
    flags |= {
        "mode": mode,
        "method": method,
        "library": library,
        "propagate": propagate,
        "curate": curate,
    }
    cfg = load_config(RateConfig, config, _overrides(sets, **flags))
    check_file(pool, POOL_RECORD)

    def body(stage) -> None:
        work_dir = output.parent / (output.name.removesuffix(".jsonl") + ".work")
        counts = rate_pool(
            pool, output, rejects_beside(output), cfg, CallCache(), work_dir, stage.previous_runs
        )
        stage.counts.update(counts)
        if counts["failed"]:
            stage.partial = f"{counts['failed']} ratings failed"

    counts = _file_stage(output, "rate", [pool], cfg, body, force)
    _echo(f"rated {counts.get('rated', 0):,}, failed {counts.get('failed', 0):,} -> {output}")
    _echo(f"scores 0-5: {counts.get('score_histogram', {})}")
    if counts.get("failed"):
        _echo("re-run the same command to retry the failed ratings")
    if counts.get(TRUNCATED_KEY):
        _echo(
            f"{counts[TRUNCATED_KEY]:,} records were judged on the first {MAX_JUDGED_CHARS:,} "
            f"characters of a longer prompt or completion (marked {TRUNCATED_KEY})"
        )
    if "agreement" in counts:
        _echo(f"kNN-Bayes agreement with the judge on held-out samples: {counts['agreement']}")


@app.command(
    epilog="Examples:\n\n    lmmixup split rated.jsonl --high high.jsonl --low low.jsonl\n\n"
    "    lmmixup split rated.jsonl --high high.jsonl --low low.jsonl --high-fraction 0.2"
)
def split(
    rated: Annotated[Path, typer.Argument(help="Rated records (JSONL).")],
    high: Annotated[Path, typer.Option(help="Output: high-quality records.")],
    low: Annotated[Path, typer.Option(help="Output: low-quality records.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    threshold: Annotated[int | None, typer.Option(help="High <=> score >= threshold [4].")] = None,
    high_fraction: Annotated[
        float | None, typer.Option(help="Take this top fraction as high instead.")
    ] = None,
) -> None:
    """Split rated records into high and low quality; failed ratings go to unrated.jsonl."""
    from lmmixup.config import SplitConfig, load_config
    from lmmixup.io.outputs import claim_outputs
    from lmmixup.stages.split import split_file, unrated_path

    cfg = load_config(
        SplitConfig, config, _overrides(sets, threshold=threshold, high_fraction=high_fraction)
    )
    written = [high, low, unrated_path(low)]
    with claim_outputs([rated], written, records=written):
        counts = split_file(rated, high, low, cfg)
    _echo(f"high {counts['high']:,} -> {high}; low {counts['low']:,} -> {low} ({counts['rule']})")
    for source, c in counts["per_source"].items():
        _echo(f"  {source}: high {c['high']:,}, low {c['low']:,}")
    if counts["unrated"]:
        _echo(
            f"{counts['unrated']:,} records have no rating (failures) -> {counts['unrated_file']}"
        )


@app.command(
    epilog="Examples:\n\n    lmmixup cluster low.jsonl -o clusters.jsonl\n\n"
    "    lmmixup cluster low.jsonl -o clusters.jsonl --min-size 2 --max-size 5 --mean-size 3 --std-size 1 --seed 0\n\n"
    "    lmmixup cluster low.jsonl -o clusters.jsonl --per-source"
)
def cluster(
    low: Annotated[
        Path, typer.Argument(help="Records to cluster (JSONL), e.g. the low-quality split.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cluster records (JSONL).")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    min_size: Annotated[int | None, typer.Option(help="Smallest cluster [2].")] = None,
    max_size: Annotated[int | None, typer.Option(help="Largest cluster [25].")] = None,
    mean_size: Annotated[float | None, typer.Option(help="Mean drawn cluster size [10].")] = None,
    std_size: Annotated[float | None, typer.Option(help="Std of drawn cluster sizes [3].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sizes and k-means [0].")] = None,
    per_source: Annotated[
        bool | None,
        typer.Option("--per-source/--all-sources", help="Cluster each source separately."),
    ] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Sentence embedder [bundled:minilm].")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Group records into clusters of pre-drawn sizes (capacity-constrained, k-means centres)."""
    from lmmixup.config import ClusterConfig, load_config
    from lmmixup.io.validate import POOL_RECORD, check_file
    from lmmixup.stages.cluster import cluster_file

    flags = {
        "min_size": min_size,
        "max_size": max_size,
        "mean_size": mean_size,
        "std_size": std_size,
        "seed": seed,
        "per_source": per_source,
        "embedder": embedder,
    }
    cfg = load_config(ClusterConfig, config, _overrides(sets, **flags))
    check_file(low, POOL_RECORD)
    counts = _file_stage(
        output,
        "cluster",
        [low],
        cfg,
        lambda stage: stage.counts.update(cluster_file(low, output, cfg)),
        force,
    )
    _echo(
        f"{counts.get('records', 0):,} records -> {counts.get('clusters', 0):,} clusters -> {output}"
    )
    _echo(f"sizes: {counts.get('size_histogram', {})}; mean cohesion {counts.get('mean_cohesion')}")
    small = counts.get("below_min_size", {})
    if small.get("clusters"):
        _echo(
            f"note: {small['clusters']:,} cluster(s) holding {small['records']:,} record(s) are "
            f"smaller than min_size {cfg.min_size}: their groups had fewer records than that"
        )


@app.command(
    epilog="Examples:\n\n    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl\n\n"
    "    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl --model runs/distiller/final\n\n"
    "    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl --backend openai "
    "--base-url http://localhost:8000/v1 --model my-distiller"
)
def distill(
    clusters: Annotated[
        Path, typer.Argument(help="Cluster records (JSONL) from `lmmixup cluster`.")
    ],
    pool: Annotated[Path, typer.Option(help="The records the clusters' member_ids refer to.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Distilled records (JSONL).")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    backend: Annotated[str | None, typer.Option(help="Distiller backend: hf | openai.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Distiller: path, bundled name, or server model name.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="openai backend: server URL.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clusters per generate call.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Tokens per distillation [512].")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy [0].")] = None,
    repetition_penalty: Annotated[
        float | None, typer.Option(help="Repetition penalty [1.05].")
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Merge each cluster into one instruction/response pair with the distiller model.

    Outputs that do not parse, copy one member, drift from the cluster or are truncated go to
    the rejects file with the reason. Interrupted runs resume at the next cluster.
    """
    from lmmixup.config import DistillConfig, load_config
    from lmmixup.io.cache import CallCache
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.distill import distill_clusters, read_distill_inputs

    generator = {"backend": backend, "model": model, "base_url": base_url, "batch_size": batch_size}
    flags = {f"generator.{k}": v for k, v in generator.items()}
    flags |= {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "repetition_penalty": repetition_penalty,
    }
    cfg = load_config(DistillConfig, config, _overrides(sets, **flags))
    read_distill_inputs(clusters, pool, allow_empty=False)

    def body(stage) -> None:
        stage.counts.update(
            distill_clusters(clusters, pool, output, rejects_beside(output), cfg, CallCache())
        )

    counts = _file_stage(output, "distill", [clusters, pool], cfg, body, force)
    _echo(f"distilled {counts.get('distilled', 0):,} clusters -> {output}")
    _echo(f"rejected: {counts.get('reject_reasons', {})} -> {rejects_beside(output)}")


@app.command(
    epilog="Examples:\n\n    lmmixup select --original high.jsonl --mixup distilled.jsonl -o train.jsonl --budget 10000 --mixup-ratio 0.3\n\n"
    "    lmmixup select --baseline random --pool rated.jsonl -o random.jsonl --budget 10000\n\n"
    "    lmmixup select --baseline ds2-like --pool rated.jsonl -o ds2.jsonl --budget 10000\n\n"
    "    lmmixup select --baseline high-only --pool rated.jsonl --high high.jsonl -o high.train.jsonl"
)
def select(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Training set (prompt/completion JSONL).")
    ],
    original: Annotated[
        Path | None, typer.Option(help="High-quality original records (rated).")
    ] = None,
    mixup: Annotated[
        Path | None, typer.Option(help="Distilled records (re-rated and kept).")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Instead: random | full | high-only | low-only | high-low | label-filtered | ds2-like, from --pool."
        ),
    ] = None,
    pool: Annotated[Path | None, typer.Option(help="Rated pool, for --baseline.")] = None,
    high: Annotated[
        Path | None,
        typer.Option(
            help="The split's high part: high-only, low-only and high-low take their bands from it instead of score >= 4."
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    budget: Annotated[int | None, typer.Option(help="Rows in the training set.")] = None,
    mixup_ratio: Annotated[
        str | None,
        typer.Option(help="Distilled share of the budget: 0.3, or 3:7 (distilled:original)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Shuffle seed [42].")] = None,
    allow_short: Annotated[
        bool,
        typer.Option(
            help="Return fewer rows than the budget when even both sides together are too few."
        ),
    ] = False,
) -> None:
    """Select a training set at an exact budget and ratio; every row says why it was chosen.

    When one side has too few candidates, the other side fills the gap (flagged in the
    .why.jsonl file and reported); with too few in total it stops unless --allow-short.
    """
    from lmmixup.config import SelectConfig, load_config
    from lmmixup.errors import LmmixupError
    from lmmixup.io.outputs import check_outputs
    from lmmixup.stages.select import BASELINES, select_baseline, select_files, why_path

    ratio = None
    if mixup_ratio is not None:
        from lmmixup.method.selection import parse_ratio

        ratio = parse_ratio(mixup_ratio)
    cfg = load_config(
        SelectConfig, config, _overrides(sets, budget=budget, mixup_ratio=ratio, seed=seed)
    )
    inputs = [path for path in (original, mixup, pool, high) if path is not None]
    check_outputs(inputs, [output, why_path(output)], records=[output])
    if baseline is not None:
        if baseline not in BASELINES or pool is None:
            raise LmmixupError(f"--baseline takes one of {', '.join(BASELINES)} and needs --pool")
        summary = select_baseline(baseline, pool, output, cfg, high=high, allow_short=allow_short)
    elif original is None or mixup is None:
        raise LmmixupError("give --original and --mixup (or --baseline NAME --pool RATED)")
    else:
        summary = select_files(
            original, mixup, output, cfg, allow_short=allow_short, allow_empty=False
        )
    _echo(f"selected {summary['rows']:,} rows -> {output} (why: {why_path(output)})")
    _echo(f"by origin: {summary['by_origin']}; by source: {summary['by_source']}")
    for note in summary.get("notes", []):
        _echo(f"note: {note}")


@app.command(
    epilog="Examples:\n\n    lmmixup run                      # the bundled demo, into runs/demo\n\n"
    "    lmmixup run my.yaml --run-dir runs/exp1\n\n"
    "    lmmixup run my.yaml --run-dir runs/exp1 --set select.budget=2000 --force"
)
def run(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (YAML); none = the bundled demo.")
    ] = None,
    run_dir: Annotated[
        Path,
        typer.Option("--run-dir", "-d", help="Folder for every stage's outputs and manifests."),
    ] = Path("runs/demo"),
    sets: SetOpt = None,
    force: Annotated[
        bool, typer.Option(help="Redo stages whose config or inputs changed, instead of refusing.")
    ] = False,
) -> None:
    """Run the whole pipeline; finished stages are skipped, interrupted ones resume."""
    from lmmixup.workflows.pipeline import load_run_config, run_pipeline

    cfg = load_run_config(config, sets or [])
    summary = run_pipeline(cfg, run_dir, force=force)
    _print_summary(summary)


_HEADLINES = {
    "import": lambda c: f"{c.get('kept', 0):,} kept, {c.get('rejected', 0):,} rejected",
    "rate": lambda c: f"{c.get('rated', 0):,} rated, {c.get('failed', 0):,} failed",
    "split": lambda c: f"{c.get('high', 0):,} high, {c.get('low', 0):,} low",
    "cluster": lambda c: (
        f"{c.get('clusters', 0):,} clusters of {c.get('records', 0):,}" + _below_min_size(c)
    ),
    "distill": lambda c: (
        f"{c.get('distilled', 0):,} distilled, {sum(c.get('reject_reasons', {}).values()):,} rejected"
    ),
    "rerate": lambda c: f"{c.get('filter', {}).get('kept', 0):,} kept of {c.get('rated', 0):,}",
    "select": lambda c: f"{c.get('rows', 0):,} rows {c.get('by_origin', {})}",
}


def _below_min_size(counts: dict) -> str:
    """The cluster stage's note on clusters smaller than min_size, when there are any."""
    small = counts.get("below_min_size", {}).get("clusters", 0)
    return f" ({small:,} below min_size)" if small else ""


def _print_summary(summary: dict) -> None:
    """The run's table (records and time per stage) and where everything is."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lmmixup run: {summary['run_dir']}")
    for column in ("stage", "status", "records", "seconds"):
        table.add_column(column)
    for name, stage in summary["stages"].items():
        status = "skipped (done)" if stage["skipped"] else stage["status"]
        headline = _HEADLINES.get(name, lambda c: "")(stage["counts"])
        table.add_row(name, status, headline, f"{stage['seconds'] or 0:.1f}")
    console = Console()
    console.print(table)
    outputs = summary["outputs"]
    if "select.train" in outputs:
        console.print(
            f"training set: {outputs['select.train']} (why each row: {outputs['select.why']})"
        )
    rejects = [path for key, path in outputs.items() if key.endswith(".rejects")]
    console.print("rejects: " + ", ".join(rejects))
    console.print(f"manifests: {summary['run_dir']}/<stage>/manifest.json")
    console.print(f"every output: {Path(summary['run_dir']) / 'summary.json'}")
    console.print(f"report: {summary['report']}")


INTERRUPTED = 130


def _os_error_message(exc: OSError) -> str:
    """An OS error as one line naming the file (disk full, permission denied, missing file)."""
    import errno

    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device writing{where or ' a file'}; free space and re-run"
    return f"{exc.filename or 'a file'}: {exc.strerror or exc}"


def _exit(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)


def main() -> None:
    """Entry point: errors become one line on stderr and exit 2 (DESIGN.md, docs/GUIDE.md);
    Ctrl-C exits 130. `-v` shows the traceback of an unexpected error instead."""
    from lmmixup.errors import LmmixupError

    try:
        code = app(standalone_mode=False)  # returns an exit code instead of exiting
    except LmmixupError as exc:
        _exit(f"error: {exc}", 2)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Abort:
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        exc.show()
        sys.exit(exc.exit_code)
    except OSError as exc:
        if _state["verbose"]:
            raise
        _exit(f"error: {_os_error_message(exc)}", 2)
    except Exception as exc:
        if _state["verbose"]:
            raise
        _exit(
            f"internal error: {str(exc) or 'no message'}; run with -v for the traceback, "
            "and please report it",
            2,
        )
    if code == INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        _exit("interrupted; re-run to continue", INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

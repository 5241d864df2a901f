"""The standalone stage commands: `lmmixup rate`, `split`, `cluster`, `distill`, `select`.

Each reads and writes files a user names; rate, cluster and distill run as resumable stages
whose manifest sits beside their output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmmixup.cli.options import (
    ForceOpt,
    FormatOpt,
    MessagesOpt,
    SetOpt,
    backend_opt,
    base_url_opt,
    concurrency_opt,
    embedder_opt,
    in_section,
    keyed,
    load_section,
    model_opt,
    overrides,
    section_config_opt,
)

stages_app = typer.Typer(rich_markup_mode="markdown")

JudgeBackendOpt = backend_opt("Judge backend", "rate.judge.backend")
JudgeModelOpt = model_opt("Judge model", "rate.judge.model")
DistillerBackendOpt = backend_opt("Distiller backend", "distill.generator.backend")
DistillerModelOpt = model_opt("Distiller", "distill.generator.model")
RateConfigOpt = section_config_opt("rate")
SplitConfigOpt = section_config_opt("split")
ClusterConfigOpt = section_config_opt("cluster")
ClusterEmbedderOpt = embedder_opt("cluster.embedder")
DistillConfigOpt = section_config_opt("distill")
DistillerBaseUrlOpt = base_url_opt("distill.generator.base_url")
JudgeConcurrencyOpt = concurrency_opt("rate.judge.concurrency")
DistillerConcurrencyOpt = concurrency_opt("distill.generator.concurrency")
SelectConfigOpt = section_config_opt("select")


def _file_stage(output: Path, name: str, inputs: list[Path], section, body, force: bool) -> dict:
    """Run a standalone command as a resumable stage whose manifest sits beside OUTPUT."""
    from lmmixup.config import result_config
    from lmmixup.runtime.runner import run_file_stage

    result = run_file_stage(
        output, name, inputs=inputs, config=result_config(section), body=body, force=force
    )
    if result.skipped:
        typer.echo(
            f"{output} is already complete for this config and input (use --force to redo it)"
        )
    return result.manifest.get("counts", {})


@stages_app.command(
    epilog="Examples:\n\n    lmmixup rate pool.jsonl -o rated.jsonl      # bundled SmolLM2, logprob mode\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --backend openai --base-url http://localhost:8000/v1 "
    "--model Qwen/Qwen2.5-7B-Instruct --concurrency 16 --max-requests 5000\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --propagate 0.1 --curate\n\n"
    "    lmmixup rate pool.jsonl -o rated.jsonl --method knn --library runs/x/rate/library"
)
def rate(
    pool: Annotated[Path, typer.Argument(help="Pool records (JSONL).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Rated records (JSONL).")],
    config: RateConfigOpt = None,
    sets: SetOpt = None,
    backend: JudgeBackendOpt = None,
    model: JudgeModelOpt = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "rate.judge.base_url", "openai backend: server URL, e.g. http://localhost:8000/v1."
            )
        ),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "rate.judge.api_key_env",
                "openai backend: variable holding the key [OPENAI_API_KEY].",
            )
        ),
    ] = None,
    concurrency: JudgeConcurrencyOpt = None,
    max_requests: Annotated[
        int | None,
        typer.Option(
            help=keyed(
                "rate.judge.max_requests", "openai backend: stop cleanly after this many requests."
            )
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=keyed("rate.judge.batch_size", "hf backend: prompts per forward pass.")),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "rate.mode",
                "logprob (hf: one forward pass; openai: the server's top logprobs) | generate | "
                "auto (logprob for hf and for a server that gives logprobs, else generate) [auto].",
            )
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help=keyed("rate.method", "judge | knn (score with --library)."))
    ] = None,
    library: Annotated[
        str | None,
        typer.Option(help=keyed("rate.library", "kNN-Bayes library folder for --method knn.")),
    ] = None,
    propagate: Annotated[
        float | None,
        typer.Option(
            help=keyed("rate.propagate", "Judge this fraction; score the rest with kNN-Bayes.")
        ),
    ] = None,
    curate: Annotated[
        bool | None,
        typer.Option(
            "--curate/--no-curate",
            help=keyed("rate.curate", "Flag ratings their neighbourhood contradicts."),
        ),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Rate every sample with the rubric judge (rarity, complexity, informativeness, overall).

    A rating that fails is recorded as `rating: null` with `rating_error`, never as a default
    score; running the same command again retries only the failures and the unrated rest.
    """
    from lmmixup.config import RateConfig
    from lmmixup.io.cache import CallCache
    from lmmixup.io.validate import POOL_RECORD, check_file
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.failures import rate_failures
    from lmmixup.stages.judge import MAX_JUDGED_CHARS, TRUNCATED_KEY
    from lmmixup.stages.rate import rate_pool

    judge = in_section(
        "judge",
        backend=backend,
        model=model,
        base_url=base_url,
        api_key_env=api_key_env,
        concurrency=concurrency,
        max_requests=max_requests,
        batch_size=batch_size,
    )
    flags = dict(mode=mode, method=method, library=library, propagate=propagate, curate=curate)
    cfg = load_section(RateConfig, config, "rate", overrides(sets, **judge, **flags))
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
    typer.echo(f"rated {counts.get('rated', 0):,}, failed {counts.get('failed', 0):,} -> {output}")
    typer.echo(f"scores 0-5: {counts.get('score_histogram', {})}")
    if counts.get("failed"):
        typer.echo("re-run the same command to retry the failed ratings")
    if counts.get(TRUNCATED_KEY):
        typer.echo(
            f"{counts[TRUNCATED_KEY]:,} records were judged on the first {MAX_JUDGED_CHARS:,} "
            f"characters of a longer prompt or completion (marked {TRUNCATED_KEY})"
        )
    if "agreement" in counts:
        typer.echo(f"kNN-Bayes agreement with the judge on held-out samples: {counts['agreement']}")
    if counts.get("judge_mode_note"):
        typer.echo(counts["judge_mode_note"])
    _exit_loudly(rate_failures(counts))


@stages_app.command(
    epilog="Examples:\n\n    lmmixup split rated.jsonl --high high.jsonl --low low.jsonl\n\n"
    "    lmmixup split rated.jsonl --high high.jsonl --low low.jsonl --high-fraction 0.2"
)
def split(
    rated: Annotated[Path, typer.Argument(help="Rated records (JSONL).")],
    high: Annotated[Path, typer.Option(help="Output: high-quality records.")],
    low: Annotated[Path, typer.Option(help="Output: low-quality records.")],
    config: SplitConfigOpt = None,
    sets: SetOpt = None,
    threshold: Annotated[
        int | None, typer.Option(help=keyed("split.threshold", "High <=> score >= threshold [4]."))
    ] = None,
    high_fraction: Annotated[
        float | None,
        typer.Option(help=keyed("split.high_fraction", "Take this top fraction as high instead.")),
    ] = None,
) -> None:
    """Split rated records into high and low quality; failed ratings go to unrated.jsonl."""
    from lmmixup.config import SplitConfig
    from lmmixup.io.outputs import claim_outputs
    from lmmixup.stages.split import split_file, unrated_path

    flags = dict(threshold=threshold, high_fraction=high_fraction)
    cfg = load_section(SplitConfig, config, "split", overrides(sets, **flags))
    written = [high, low, unrated_path(low)]
    with claim_outputs([rated], written, records=written):
        counts = split_file(rated, high, low, cfg)
    typer.echo(
        f"high {counts['high']:,} -> {high}; low {counts['low']:,} -> {low} ({counts['rule']})"
    )
    for source, c in counts["per_source"].items():
        typer.echo(f"  {source}: high {c['high']:,}, low {c['low']:,}")
    if counts["unrated"]:
        typer.echo(
            f"{counts['unrated']:,} records have no rating (failures) -> {counts['unrated_file']}"
        )


@stages_app.command(
    epilog="Examples:\n\n    lmmixup cluster low.jsonl -o clusters.jsonl\n\n"
    "    lmmixup cluster low.jsonl -o clusters.jsonl --min-size 2 --max-size 5 --mean-size 3 --std-size 1 --seed 0\n\n"
    "    lmmixup cluster low.jsonl -o clusters.jsonl --per-source"
)
def cluster(
    low: Annotated[
        Path, typer.Argument(help="Records to cluster (JSONL), e.g. the low-quality split.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Cluster records (JSONL).")],
    config: ClusterConfigOpt = None,
    sets: SetOpt = None,
    min_size: Annotated[
        int | None, typer.Option(help=keyed("cluster.min_size", "Smallest cluster [2]."))
    ] = None,
    max_size: Annotated[
        int | None, typer.Option(help=keyed("cluster.max_size", "Largest cluster [25]."))
    ] = None,
    mean_size: Annotated[
        float | None, typer.Option(help=keyed("cluster.mean_size", "Mean drawn cluster size [10]."))
    ] = None,
    std_size: Annotated[
        float | None,
        typer.Option(help=keyed("cluster.std_size", "Std of drawn cluster sizes [3].")),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=keyed("cluster.seed", "Seed for sizes and k-means [0]."))
    ] = None,
    per_source: Annotated[
        bool | None,
        typer.Option(
            "--per-source/--no-per-source",
            help=keyed("cluster.per_source", "Cluster each source separately."),
        ),
    ] = None,
    embedder: ClusterEmbedderOpt = None,
    force: ForceOpt = False,
) -> None:
    """Group records into clusters of pre-drawn sizes (capacity-constrained, k-means centres)."""
    from lmmixup.config import ClusterConfig
    from lmmixup.io.validate import POOL_RECORD, check_file
    from lmmixup.runtime.runner import rejects_beside
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
    cfg = load_section(ClusterConfig, config, "cluster", overrides(sets, **flags))
    check_file(low, POOL_RECORD)
    counts = _file_stage(
        output,
        "cluster",
        [low],
        cfg,
        lambda stage: stage.counts.update(cluster_file(low, output, cfg)),
        force,
    )
    typer.echo(
        f"{counts.get('records', 0):,} records -> {counts.get('clusters', 0):,} clusters -> {output}"
    )
    typer.echo(
        f"sizes: {counts.get('size_histogram', {})}; mean cohesion {counts.get('mean_cohesion')}"
    )
    small = counts.get("below_min_size", {})
    if small.get("clusters"):
        typer.echo(
            f"note: {small['clusters']:,} cluster(s) holding {small['records']:,} record(s) are "
            f"smaller than min_size {cfg.min_size}: their groups had fewer records than that"
        )
    if counts.get("near_duplicates"):
        typer.echo(
            f"{counts['near_duplicates']:,} near-duplicate record(s) not clustered "
            f"(cosine >= {cfg.dedup_threshold}) -> {rejects_beside(output)}"
        )
    if counts.get("incoherent_clusters"):
        typer.echo(
            f"note: {counts['incoherent_clusters']:,} cluster(s) holding "
            f"{counts.get('incoherent_members', 0):,} record(s) are below min_cohesion "
            f"{cfg.min_cohesion} (coherent: false): distill skips them"
        )


@stages_app.command(
    epilog="Examples:\n\n    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl\n\n"
    "    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl --model runs/distiller/final\n\n"
    "    lmmixup distill clusters.jsonl --pool low.jsonl -o distilled.jsonl --backend openai "
    "--base-url http://localhost:8000/v1 --model my-distiller --concurrency 64"
)
def distill(
    clusters: Annotated[
        Path, typer.Argument(help="Cluster records (JSONL) from `lmmixup cluster`.")
    ],
    pool: Annotated[Path, typer.Option(help="The records the clusters' member_ids refer to.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Distilled records (JSONL).")],
    config: DistillConfigOpt = None,
    sets: SetOpt = None,
    backend: DistillerBackendOpt = None,
    model: DistillerModelOpt = None,
    base_url: DistillerBaseUrlOpt = None,
    concurrency: DistillerConcurrencyOpt = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help=keyed("distill.generator.batch_size", "hf/vllm backend: clusters per call.")
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(help=keyed("distill.max_new_tokens", "Tokens per distillation [512].")),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help=keyed("distill.temperature", "0 = greedy [0]."))
    ] = None,
    repetition_penalty: Annotated[
        float | None,
        typer.Option(help=keyed("distill.repetition_penalty", "Repetition penalty [1.05].")),
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Merge each cluster into one instruction/response pair with the distiller model.

    Outputs that do not parse, copy one member, drift from the cluster or are truncated go to
    the rejects file with the reason. Interrupted runs resume at the next cluster.
    """
    from lmmixup.config import DistillConfig
    from lmmixup.io.cache import CallCache
    from lmmixup.runtime.runner import rejects_beside
    from lmmixup.stages.distill import GENERATION_ERROR, distill_clusters, read_distill_inputs
    from lmmixup.stages.failures import distill_failures

    generator = in_section(
        "generator",
        backend=backend,
        model=model,
        base_url=base_url,
        concurrency=concurrency,
        batch_size=batch_size,
    )
    flags = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        repetition_penalty=repetition_penalty,
    )
    cfg = load_section(DistillConfig, config, "distill", overrides(sets, **generator, **flags))
    read_distill_inputs(clusters, pool, allow_empty=False)

    def body(stage) -> None:
        counts = distill_clusters(clusters, pool, output, rejects_beside(output), cfg, CallCache())
        stage.counts.update(counts)
        failed = counts["reject_reasons"].get(GENERATION_ERROR, 0)
        if failed:  # retried by the next run of the same command
            stage.partial = f"{failed} clusters failed in the distiller"

    counts = _file_stage(output, "distill", [clusters, pool], cfg, body, force)
    typer.echo(f"distilled {counts.get('distilled', 0):,} clusters -> {output}")
    typer.echo(f"rejected: {counts.get('reject_reasons', {})} -> {rejects_beside(output)}")
    _exit_loudly(distill_failures(counts, GENERATION_ERROR))


def _exit_loudly(note) -> None:
    """A note on failed model calls (`stages.failures`) on stderr, then exit code 1."""
    if note is not None:
        typer.echo(f"warning: {note.message}\n  what to do: {note.advice}", err=True)
        raise typer.Exit(1)


@stages_app.command(
    epilog="Examples:\n\n    lmmixup select --original high.jsonl --mixup distilled.jsonl -o train.jsonl --budget 10000 --mixup-ratio 0.3\n\n"
    "    lmmixup select --baseline random --pool rated.jsonl -o random.jsonl --budget 10000\n\n"
    "    lmmixup select --baseline ds2-like --pool rated.jsonl -o ds2.jsonl --budget 10000\n\n"
    "    lmmixup select --baseline high-only --pool rated.jsonl --high high.jsonl -o high.train.jsonl\n\n"
    "    lmmixup select --original high.jsonl --mixup distilled.jsonl -o train.parquet --messages  # TRL's conversational format"
)
def select(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Training set: NAME.jsonl, NAME.parquet, or a folder (saved HF dataset).",
        ),
    ],
    output_format: FormatOpt = None,
    messages: MessagesOpt = False,
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
    config: SelectConfigOpt = None,
    sets: SetOpt = None,
    budget: Annotated[
        int | None, typer.Option(help=keyed("select.budget", "Rows in the training set."))
    ] = None,
    mixup_ratio: Annotated[
        str | None,
        typer.Option(
            help=keyed(
                "select.mixup_ratio",
                "Distilled share of the budget: 0.3, or 3:7 (distilled:original).",
            )
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=keyed("select.seed", "Shuffle seed [42]."))
    ] = None,
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
    from lmmixup.config import SelectConfig
    from lmmixup.errors import LmmixupError
    from lmmixup.io.formats import RecordOutput
    from lmmixup.io.outputs import check_outputs
    from lmmixup.stages.select import BASELINES, select_baseline, select_files, why_path

    ratio = None
    if mixup_ratio is not None:
        from lmmixup.method.selection import parse_ratio

        ratio = parse_ratio(mixup_ratio)
    flags = dict(budget=budget, mixup_ratio=ratio, seed=seed)
    cfg = load_section(SelectConfig, config, "select", overrides(sets, **flags))
    inputs = [path for path in (original, mixup, pool, high) if path is not None]
    out = RecordOutput.of(output, output_format, messages)
    check_outputs(inputs, [output, why_path(output)])
    if baseline is not None:
        if baseline not in BASELINES or pool is None:
            raise LmmixupError(f"--baseline takes one of {', '.join(BASELINES)} and needs --pool")
        summary = select_baseline(baseline, pool, out, cfg, high=high, allow_short=allow_short)
    elif original is None or mixup is None:
        raise LmmixupError("give --original and --mixup (or --baseline NAME --pool RATED)")
    else:
        summary = select_files(
            original, mixup, out, cfg, allow_short=allow_short, allow_empty=False
        )
    typer.echo(f"selected {summary['rows']:,} rows -> {output} (why: {why_path(output)})")
    typer.echo(f"by origin: {summary['by_origin']}; by source: {summary['by_source']}")
    for note in summary.get("notes", []):
        typer.echo(f"note: {note}")

"""A plan before a big run: per stage, the model calls, prompt and completion tokens and the
time they take at a given or measured throughput; after a run, the plan against what happened.

The pool is counted by streaming the import's sources through the import's own row checks,
filters, samples, limit and hold-out (nothing is written, no model loads). Prompts are rendered
for a seeded sample of the rows and counted with the model's tokenizer (hf, vllm: the tokenizer
files only) or estimated at CHARS_PER_TOKEN characters a token (openai servers, or a tokenizer
that cannot be loaded); each stage says which. What the run decides as it goes (the judge's
split into high and low, incoherent clusters, retries) is planned from the config where it
fixes it (`split.high_fraction`, cluster sizes) and from a stated assumption otherwise.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmmixup.backends.chat import load_chat_tokenizer, render_chat
from lmmixup.config import BackendConfig, ImportConfig, RunConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.sources import default_source_name, iter_source
from lmmixup.method.cluster_sizes import draw_cluster_sizes
from lmmixup.method.prompt import build_messages
from lmmixup.method.rubric import build_rubric_logprob_prompt, build_rubric_messages
from lmmixup.records import BadRow, normalise_row
from lmmixup.stages.distill import INCOHERENT
from lmmixup.stages.import_pool import length_ok, reserved_lines
from lmmixup.stages.judge import MAX_JUDGED_CHARS

CHARS_PER_TOKEN = 4
LOCAL_BACKENDS = ("hf", "vllm")  # their tokenizer files are here: tokens are counted
SAMPLE_ROWS = 256
DEFAULT_LOW_SHARE = 0.5
PLAN_FILE = "plan.json"
# The size of a judge's reply in generate mode (the rubric's own example) and of a distilled
# reply's think block: the typical completions a plan counts besides the caps.
JUDGE_REPLY = '{"rarity": 4, "complexity": 6, "informativeness": 7, "overall": 7}'
THINK_BLOCK = "<think>\nKeep the shared question, merge the answers, drop the repetition.\n</think>"


@dataclass
class Throughput:
    """How fast the model side goes: generated tokens/s (optionally prompt tokens/s too), or
    requests/s; None where not known."""

    tokens_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    source: str = "given"

    def seconds(self, calls: int, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.requests_per_s:
            return calls / self.requests_per_s
        if not self.tokens_per_s:
            return None
        prefill = prompt_tokens / self.prompt_tokens_per_s if self.prompt_tokens_per_s else 0.0
        return completion_tokens / self.tokens_per_s + prefill


@dataclass
class StagePlan:
    """What one stage asks of its model (calls, tokens) and of the embedder (texts)."""

    stage: str
    model: str | None = None
    calls: int = 0
    calls_max: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0  # typical replies
    completion_tokens_max: int = 0  # every reply at its cap
    tokens_counted: str = "none"  # tokenizer | estimate (N chars/token)
    embedded_texts: int = 0
    seconds: float | None = None
    seconds_max: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    pool_rows: int
    stages: list[StagePlan]
    assumptions: list[str]
    throughput: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- the pool


@dataclass
class PoolScan:
    """The rows the import would keep, and a seeded sample of them for counting tokens."""

    rows: int
    sample: list[dict]


def scan_pool(cfg: ImportConfig, sample_size: int = SAMPLE_ROWS) -> PoolScan:
    """Count the rows `import` keeps from `cfg.sources` (same checks, filters, samples, limit
    and hold-out) without writing them, keeping a seeded reservoir sample."""
    rng = random.Random(cfg.seed)
    sample: list[dict] = []
    seen: set[str] = set()
    rows = scanned = 0
    sampled = cfg.sample is not None or any(s.sample is not None for s in cfg.sources)
    stop_at = None if sampled else cfg.limit  # the import, too, reads no further
    for source in cfg.sources:
        _, lines = iter_source(source.path)
        reserved = reserved_lines(source.path)
        kept = 0
        for line in lines:
            if stop_at is not None and scanned >= stop_at:
                break
            record = _kept_row(line, source.path, reserved, seen, cfg)
            if record is None:
                continue
            kept += 1
            scanned += 1
            if len(sample) < sample_size:
                sample.append(record)
            elif (slot := rng.randrange(scanned)) < sample_size:
                sample[slot] = record
        rows += min(kept, source.sample or kept)
    rows = min(rows, cfg.sample or rows, cfg.limit or rows)
    held = round(rows * cfg.holdout_fraction)
    return PoolScan(rows - min(held, cfg.holdout_max or held), sample)


def _kept_row(line, source: str, reserved, seen: set[str], cfg: ImportConfig) -> dict | None:
    """The pool record of a source line, None where the import would not keep it."""
    if line.number in reserved or line.error is not None:
        return None
    try:
        record = normalise_row(
            line.value, default_source=default_source_name(source), max_chars=cfg.reject_over_chars
        )
    except BadRow:
        return None
    if record["id"] in seen or not length_ok(record, cfg):
        return None
    seen.add(record["id"])
    return record


def pool_file_scan(path: Path, sample_size: int = SAMPLE_ROWS, seed: int = 0) -> PoolScan:
    """A pool file already imported: its rows and a seeded sample."""
    lines = path.read_text(encoding="utf-8").splitlines()
    chosen = random.Random(seed).sample(range(len(lines)), min(sample_size, len(lines)))
    return PoolScan(len(lines), [json.loads(lines[i]) for i in sorted(chosen)])


# ---------------------------------------------------------------------------- tokens


class TokenCounter:
    """Tokens of chat prompts and texts: the model's tokenizer where the model is local (hf,
    vllm) and its tokenizer loads, else CHARS_PER_TOKEN characters a token."""

    def __init__(self, backend: BackendConfig, use_tokenizer: bool = True):
        local = backend.backend in LOCAL_BACKENDS
        self.tokenizer = _tokenizer(backend.model) if use_tokenizer and local else None
        self.method = "tokenizer" if self.tokenizer else f"estimate ({CHARS_PER_TOKEN} chars/token)"

    def text(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, round(len(text) / CHARS_PER_TOKEN))
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, messages: list[dict], assistant_prefix: str = "") -> int:
        if self.tokenizer is None:
            text = "".join(m["content"] for m in messages) + assistant_prefix
            return self.text(text) + 4 * len(messages)  # role markers
        return self.text(render_chat(self.tokenizer, messages, assistant_prefix))


def _tokenizer(model: str):
    """The model's tokenizer, None where it cannot be loaded here (then tokens are estimated)."""
    try:
        return load_chat_tokenizer(model)
    except (OSError, ValueError, LmmixupError):
        return None


def _mean(values: list[int]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------------------- stages


def plan_run(
    cfg: RunConfig,
    scan: PoolScan,
    throughput: dict[str, Throughput] | None = None,
    *,
    low_share: float = DEFAULT_LOW_SHARE,
    use_tokenizer: bool = True,
) -> Plan:
    """The plan of `lmmixup run` with this config over the scanned pool; `throughput` by
    stage name (rate, distill, rerate), `low_share` the share of rated rows assumed low when
    the judge's threshold decides it."""
    throughput = throughput or {}
    assumptions: list[str] = []
    judge = TokenCounter(cfg.rate.judge, use_tokenizer)
    rate = _rate_plan("rate", cfg, scan.sample, scan.rows, judge, propagate=cfg.rate.propagate)
    if cfg.split.high_fraction is not None:
        low = scan.rows - round(scan.rows * cfg.split.high_fraction)
    else:
        low = round(scan.rows * low_share)
        assumptions.append(
            f"{low_share:.0%} of the rated rows are low quality (the judge decides; "
            "set --low-share, or split.high_fraction fixes it)"
        )
    clusters = _cluster_count(low, cfg)
    cluster = StagePlan("cluster", embedded_texts=low, notes=[f"{clusters:,} clusters of {low:,}"])
    distill = _distill_plan(
        cfg, scan.sample, clusters, TokenCounter(cfg.distill.generator, use_tokenizer)
    )
    rerate = _rate_plan("rerate", cfg, scan.sample, clusters, judge, propagate=None)
    rerate.notes.append("at most one distilled pair per cluster")
    high = scan.rows - low
    select = StagePlan("select", embedded_texts=high + clusters)
    stages = [StagePlan("import", notes=[f"{scan.rows:,} rows"]), rate, cluster, distill]
    stages += [rerate, select]
    for stage in stages:
        speed = throughput.get(stage.stage)
        if speed is not None and stage.calls:
            stage.seconds = speed.seconds(stage.calls, stage.prompt_tokens, stage.completion_tokens)
            stage.seconds_max = speed.seconds(
                stage.calls_max, stage.prompt_tokens, stage.completion_tokens_max
            )
    return Plan(
        scan.rows,
        stages,
        assumptions,
        {name: asdict(speed) for name, speed in throughput.items()},
    )


def _rate_plan(
    name: str,
    cfg: RunConfig,
    sample: list[dict],
    rows: int,
    counter: TokenCounter,
    propagate: float | None,
) -> StagePlan:
    """Judge calls and tokens for rating `rows` records like the sampled ones."""
    rate = cfg.rate
    plan = StagePlan(name, model=rate.judge.model, tokens_counted=counter.method)
    if rate.method == "knn":
        plan.embedded_texts = rows
        plan.notes.append("kNN-Bayes scores: no judge calls")
        return plan
    judged = rows if propagate is None else round(rows * propagate)
    if propagate is not None:
        plan.embedded_texts = rows
        plan.notes.append(f"judge {propagate:.0%}, kNN-Bayes the rest")
    if rate.curate:
        plan.embedded_texts = max(plan.embedded_texts, judged)
    logprob = rate.mode == "logprob"
    per_call = _mean([_judge_prompt_tokens(counter, record, logprob) for record in sample])
    plan.calls = judged
    plan.prompt_tokens = round(per_call * judged)
    if logprob:  # one score token read per call; a likely "1" asks again for a "10"
        plan.calls_max = 2 * judged
        plan.completion_tokens = plan.completion_tokens_max = judged
        plan.notes.append("logprob: one token read per call")
    else:
        if rate.mode == "auto":
            plan.notes.append("mode auto: the server decides at the start; planned as generate")
        plan.calls_max = judged * rate.attempts
        plan.completion_tokens = judged * counter.text(JUDGE_REPLY)
        plan.completion_tokens_max = plan.calls_max * rate.max_new_tokens
        plan.notes.append(f"generate: up to {rate.attempts} attempts per row")
    return plan


def _judge_prompt_tokens(counter: TokenCounter, record: dict, logprob: bool) -> int:
    prompt = record["prompt"][:MAX_JUDGED_CHARS]
    completion = record["completion"][:MAX_JUDGED_CHARS]
    if logprob:
        rendered = build_rubric_logprob_prompt(prompt, completion)
        return counter.prompt(rendered.messages, rendered.assistant_prefix)
    return counter.prompt(build_rubric_messages(prompt, completion))


def _cluster_count(low: int, cfg: RunConfig) -> int:
    """How many clusters the cluster stage draws for `low` records (its own size draw)."""
    c = cfg.cluster
    try:
        sizes = draw_cluster_sizes(
            low,
            min_size=c.min_size,
            max_size=c.max_size,
            mean_size=c.mean_size,
            std_size=c.std_size,
            seed=c.seed,
        )
    except ValueError:
        return round(low / c.mean_size)
    return len(sizes)


def _distill_plan(
    cfg: RunConfig, sample: list[dict], clusters: int, counter: TokenCounter
) -> StagePlan:
    """Distiller calls and tokens for `clusters` clusters of the configured mean size."""
    d = cfg.distill
    plan = StagePlan("distill", model=d.generator.model, tokens_counted=counter.method)
    size = max(1, round(cfg.cluster.mean_size))
    groups = [
        [sample[(start + i) % len(sample)] for i in range(size)]
        for start in range(0, len(sample), size)
    ]
    prompt = _mean(
        [counter.prompt(build_messages(g, d.default_task_type, d), d.answer_prefix) for g in groups]
    )
    member = _mean([counter.text(f"Q: {r['prompt']}\nA: {r['completion']}") for r in sample])
    reply = min(d.max_new_tokens, round(member + counter.text(THINK_BLOCK)))
    plan.calls = plan.calls_max = clusters * d.candidates
    plan.prompt_tokens = round(prompt * plan.calls)
    plan.completion_tokens = reply * plan.calls
    plan.completion_tokens_max = d.max_new_tokens * plan.calls
    plan.embedded_texts = plan.calls * (size + 1)
    plan.notes.append("at most: clusters below the cohesion floor are not sent")
    return plan


# ---------------------------------------------------------------------------- after the run


def actual_use(stage: str, counts: dict, config: dict | None = None) -> dict[str, int | None]:
    """The model calls and tokens a stage's manifest counts record (None: not recorded);
    `config` is the stage's (distill: its `candidates`, calls per cluster)."""
    judged = stage in ("rate", "rerate")
    usage = counts.get("judge_usage" if judged else "distiller_usage")
    if usage:
        return {
            "calls": usage.get("requests"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
        }
    done = counts.get("judge", {}) if judged else counts
    calls = done.get("written", 0) + done.get("rejected", 0) if done else None
    if calls is not None and not judged:
        # clusters below the cohesion floor are rejected without a model call
        calls -= counts.get("reject_reasons", {}).get(INCOHERENT, 0)
        calls *= (config or {}).get("candidates", 1)
    return {"calls": calls, "prompt_tokens": None, "completion_tokens": None}


def against_plan(plan: dict, stages: dict[str, dict]) -> list[dict]:
    """Per planned stage with model calls: planned and actual calls and tokens."""
    rows = []
    for planned in plan["stages"]:
        name = planned["stage"]
        if not planned["calls"] or name not in stages:
            continue
        actual = actual_use(name, stages[name].get("counts", {}), stages[name].get("config"))
        rows.append(
            {
                "stage": name,
                "planned_calls": planned["calls"],
                "actual_calls": actual["calls"],
                "planned_prompt_tokens": planned["prompt_tokens"],
                "actual_prompt_tokens": actual["prompt_tokens"],
                "planned_completion_tokens": planned["completion_tokens"],
                "planned_completion_tokens_max": planned["completion_tokens_max"],
                "actual_completion_tokens": actual["completion_tokens"],
                "tokens_counted": planned["tokens_counted"],
            }
        )
    return rows


def measured_throughput(run_dir: Path) -> dict[str, Throughput]:
    """Requests/s (and generated tokens/s where recorded) of each model stage of a run."""
    out: dict[str, Throughput] = {}
    for stage in ("rate", "distill", "rerate"):
        try:
            manifest = json.loads((run_dir / stage / "manifest.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        seconds = manifest.get("total_seconds") or 0
        use = actual_use(stage, manifest.get("counts", {}))
        if seconds and use["calls"]:
            tokens = use["completion_tokens"]
            out[stage] = Throughput(
                tokens_per_s=tokens / seconds if tokens else None,
                requests_per_s=use["calls"] / seconds,
                source=f"measured in {run_dir / stage}",
            )
    return out


def write_plan(run_dir: Path, plan: Plan) -> Path:
    from lmmixup.io.jsonl import write_text_atomic

    path = run_dir / PLAN_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(plan.as_dict(), indent=2))
    return path


def read_plan(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / PLAN_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None

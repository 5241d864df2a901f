"""What became of a sample of clusters: their members, the distilled pair or the reject, the
pair's re-rating, and whether it was kept and selected for training."""

from __future__ import annotations

from dataclasses import dataclass

from lmmixup.report.data import RunView, rating_score

SAMPLE_MEMBERS = 6  # members shown per cluster
# Where the members' texts are read from, best first.
POOL_FILES = (("split", "low.jsonl"), ("rate", "rated.jsonl"), ("import", "pool.jsonl"))


@dataclass
class Lineage:
    """Outputs, rejects, members, re-ratings and selection of the sampled clusters."""

    outputs: dict  # cluster_id -> distilled record
    rejects: dict  # cluster_id -> distill reject
    members: dict  # member id -> pool record
    ratings: dict  # distilled id -> re-rated record
    kept: set | None  # distilled ids kept after re-rating (None: not re-rated yet)
    selected: set  # distilled ids in the training set

    def fate(self, output: dict) -> str:
        """A distilled pair's outcome: its re-rated score, kept or not, selected or not."""
        score = rating_score(self.ratings.get(output.get("id")) or {})
        fate = "distilled" + (f", re-rated score {score}" if score is not None else "")
        if self.kept is not None:
            fate += ", kept" if output.get("id") in self.kept else ", not kept"
        return fate + (", selected" if output.get("id") in self.selected else "")


def reject_cluster(reject: dict) -> object:
    """The cluster id of a distill reject, when its raw record has one."""
    raw = reject.get("raw")
    return raw.get("cluster_id") if isinstance(raw, dict) else None


def trace_lineage(run: RunView, chosen: list[dict]) -> Lineage:
    """The lineage of the `chosen` clusters, reading each file of the run once."""
    ids = {c["cluster_id"] for c in chosen}
    outputs = run.pick(run.file("distill", "distilled.jsonl"), ids, lambda r: r.get("cluster_id"))
    rejects = run.pick(run.file("distill", "rejects.jsonl"), ids, reject_cluster)
    wanted = {m for c in chosen for m in c["member_ids"][:SAMPLE_MEMBERS]}
    source = next((path for stage, name in POOL_FILES if (path := run.file(stage, name))), None)
    made = {o.get("id") for o in outputs.values()}
    kept_path = run.file("rerate", "kept.jsonl")
    return Lineage(
        outputs=outputs,
        rejects=rejects,
        members=run.pick(source, wanted, lambda r: r.get("id")),
        ratings=run.pick(run.file("rerate", "rated.jsonl"), made, lambda r: r.get("id")),
        kept=set(run.pick(kept_path, made, lambda r: r.get("id"))) if kept_path else None,
        selected=set(run.pick(run.file("select", "train.jsonl"), made, lambda r: r.get("id"))),
    )

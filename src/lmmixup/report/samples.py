"""The "before and after" section: a sample of clusters, each with its members next to the
distilled pair (or the reject) and the pair's checks and outcome."""

from __future__ import annotations

import json

from lmmixup.report.data import (
    MAX_CHARS,
    RunView,
    clip,
    cluster_records,
    not_available,
    number,
    rating_score,
)
from lmmixup.report.lineage import SAMPLE_MEMBERS, Lineage, trace_lineage

SAMPLE_CLUSTERS = 12  # clusters shown


def spread(items: list, k: int) -> list:
    """`k` items spread evenly over the list, in order."""
    if len(items) <= k:
        return list(items)
    return [items[i * len(items) // k] for i in range(k)]


def _pair(record: dict) -> dict:
    return {"prompt": clip(record.get("prompt")), "completion": clip(record.get("completion"))}


def _members(cluster: dict, members: dict) -> list[dict]:
    shown = []
    for member_id in cluster["member_ids"][:SAMPLE_MEMBERS]:
        member = members.get(member_id)
        item = {"id": clip(member_id, 80), "found": member is not None}
        if member is not None:
            item |= {"score": str(rating_score(member)), **_pair(member)}
        shown.append(item)
    return shown


def _after(output: dict | None, reject: dict | None, fate: str) -> dict | None:
    """The distilled side of a cluster: the pair (or raw output), its checks and outcome."""
    if output is None and reject is None:
        return None
    record = output if output is not None else reject.get("raw", {})
    record = record if isinstance(record, dict) else {}
    after = {
        "rejected": str(reject.get("reason")) if reject is not None else None,
        "pair": None,
        "raw_output": None,
    }
    if record.get("prompt") is not None or record.get("completion") is not None:
        after["pair"] = _pair(record)
    elif record.get("raw_output"):
        after["raw_output"] = clip(record["raw_output"])
    checks = record.get("checks") if isinstance(record.get("checks"), dict) else {}
    rows = [[str(k), clip(json.dumps(v, ensure_ascii=False), 200)] for k, v in checks.items()]
    rows += [
        [key, clip(record[key], 200)]
        for key in ("finish_reason", "model")
        if record.get(key) is not None
    ]
    if fate:
        rows.append(["outcome", fate])
    return after | {"checks": rows}


def outcome(cluster: dict, output: dict | None, reject: dict | None, lineage: Lineage) -> str:
    """What became of a cluster, for its summary line (a reject's reason in full)."""
    if output is not None:
        return lineage.fate(output)
    if reject is not None:
        return f"rejected: {reject.get('reason', 'no reason given')}"
    if cluster.get("coherent") is False:
        return "incoherent (below min_cohesion): not distilled"
    return "not distilled yet"


def _cluster(cluster: dict, lineage: Lineage) -> dict:
    output = lineage.outputs.get(cluster["cluster_id"])
    reject = lineage.rejects.get(cluster["cluster_id"]) if output is None else None
    cohesion = number(cluster.get("cohesion"))
    summary = (
        f"{clip(cluster['cluster_id'], 80)} · {clip(cluster.get('source', '?'), 80)} · "
        f"{len(cluster['member_ids'])} members · cohesion "
        + (f"{cohesion:.3f}" if cohesion is not None else "n/a")
    )
    return {
        "summary": summary,
        "outcome": outcome(cluster, output, reject, lineage),
        "members": _members(cluster, lineage.members),
        "more": max(0, len(cluster["member_ids"]) - SAMPLE_MEMBERS),
        "after": _after(output, reject, lineage.fate(output) if output else ""),
    }


def samples_section(run: RunView) -> dict:
    """A sample of clusters: members (before) next to the distilled pair (after) and its checks."""
    clusters = cluster_records(run)
    if not clusters:
        return {"note": not_available("cluster/clusters.jsonl")}
    made = {r.get("cluster_id") for r in run.rows(run.file("distill", "distilled.jsonl"))}
    accepted = [c for c in clusters if c["cluster_id"] in made]
    chosen = spread(accepted, SAMPLE_CLUSTERS * 2 // 3)
    chosen += spread(
        [c for c in clusters if c["cluster_id"] not in made], SAMPLE_CLUSTERS - len(chosen)
    )
    lineage = trace_lineage(run, chosen)
    intro = (
        f"{len(chosen)} of {len(clusters):,} clusters ({len(accepted):,} distilled in all), "
        f"spread over the file, distilled ones first. Texts are clipped to {MAX_CHARS} "
        "characters."
    )
    return {"intro": intro, "clusters": [_cluster(cluster, lineage) for cluster in chosen]}

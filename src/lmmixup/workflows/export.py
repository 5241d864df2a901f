"""`lmmixup export`: a finished run's training set as a file or a Hugging Face dataset with its
card, and the upload of that dataset to the Hub.

OUT ending in `.jsonl` or `.parquet` is that file; any other OUT is a folder holding the set
saved with `save_to_disk` and its card (README.md). Rows keep their provenance fields (id,
source, origin, member_ids, cluster_id, score); `messages` writes TRL's conversational rows.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmmixup.errors import LmmixupError
from lmmixup.io.formats import RecordOutput
from lmmixup.io.jsonl import read_records
from lmmixup.io.outputs import claim_outputs
from lmmixup.runtime.manifest import read_manifest
from lmmixup.workflows.dataset_card import CardFacts, dataset_card
from lmmixup.workflows.health import check_run

TRAIN_FILE = Path("select") / "train.jsonl"
CARD_FILE = "README.md"


@dataclass
class ExportResult:
    output: RecordOutput
    rows: int
    card: Path | None


def _finished_training_set(run_dir: Path) -> Path:
    """The run's training set, refused unless its select stage completed."""
    manifest = read_manifest(run_dir / "select" / "manifest.json") or {}
    train = run_dir / TRAIN_FILE
    if manifest.get("status") != "complete" or not train.is_file():
        raise LmmixupError(
            f"{run_dir}: no finished select stage (select/train.jsonl); finish the run with "
            f"`lmmixup run CONFIG --run-dir {run_dir}`, then export"
        )
    return train


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LmmixupError(f"{path}: not valid JSON ({exc}); re-run the run to rewrite it") from exc
    return summary if isinstance(summary, dict) else {}


def card_facts(run_dir: Path, rows: list[dict], **labels) -> CardFacts:
    """What the card is written from; the warnings are summary.json's, else checked anew."""
    summary = _summary(run_dir)
    config = run_dir / "config.yaml"
    warnings = summary.get("warnings")
    if not isinstance(warnings, list):
        warnings = [warning.as_dict() for warning in check_run(run_dir)]
    return CardFacts(
        run_dir=run_dir,
        summary=summary,
        config_text=config.read_text(encoding="utf-8") if config.is_file() else "",
        rows=rows,
        warnings=warnings,
        **labels,
    )


def export_run(
    run_dir: str | Path,
    output: RecordOutput,
    *,
    license: str | None = None,
    languages: list[str] | None = None,
) -> ExportResult:
    """Write the run's training set to `output` (with a card when it is a dataset folder)."""
    run_dir = Path(run_dir)
    train = _finished_training_set(run_dir)
    with claim_outputs([train, run_dir / "summary.json"], [output.path]):
        rows = read_records(train)
        if output.fmt != "hf":
            output.write(rows)
            return ExportResult(output, len(rows), None)
        facts = card_facts(
            run_dir, rows, license=license, languages=languages or [], messages=output.messages
        )
        output.write(rows, extra_files={CARD_FILE: dataset_card(facts)})
    return ExportResult(output, len(rows), output.path / CARD_FILE)


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload an exported dataset folder to the Hub dataset repo `repo` (created if needed);
    the token comes from HF_TOKEN (or a saved `hf auth login`). Returns the commit URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise LmmixupError(
            f"no Hugging Face token to upload {repo} with; set HF_TOKEN to a token with write access"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="dataset",
            commit_message="Upload the training set exported by lmmixup",
        )
    except HfHubHTTPError as exc:
        reason = str(exc).splitlines()[0]
        raise LmmixupError(f"the Hugging Face Hub refused the upload to {repo}: {reason}") from exc
    except ValueError as exc:  # the Hub found the card's metadata invalid
        reason = " ".join(str(exc).split())
        raise LmmixupError(f"the Hugging Face Hub refused the card of {repo}: {reason}") from exc
    except _network_errors() as exc:
        raise LmmixupError(
            f"cannot reach the Hugging Face Hub to upload {repo}: {exc}; the dataset is saved "
            f"in {folder}: push it from a machine with a network"
        ) from exc
    return str(getattr(commit, "commit_url", commit))


def _network_errors() -> tuple[type[Exception], ...]:
    """Offline mode and refused or lost connections: OS errors, and the transport errors of
    the HTTP library huggingface_hub uses (httpx2 for huggingface_hub 2, httpx before)."""
    errors: list[type[Exception]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(errors)

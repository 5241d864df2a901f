"""Reading through `datasets`: Hugging Face Hub dataset ids, and local files or folders only
`datasets` reads (Arrow files, folders of data files).

A Hub source is `OWNER/NAME`, `OWNER/NAME:SPLIT` or `OWNER/NAME:CONFIG:SPLIT`; the split may
carry a slice (`train[:1000]`) and is `train` when left out, so a test split is never
imported by accident. Without a network (or with HF_HUB_OFFLINE=1 and the dataset not in the
local cache) loading stops with one line saying how to bring the data over.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmmixup.errors import LmmixupError

_PART = r"[^:\[\]]+(?:\[[^\]]*\])?"
_HUB_ID = re.compile(
    rf"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<first>{_PART}))?(?::(?P<second>{_PART}))?"
)
DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class HubSource:
    """A Hub dataset as a source: repository id, config (subset) and split."""

    repo: str
    config: str | None = None
    split: str = DEFAULT_SPLIT

    def __str__(self) -> str:
        return ":".join(part for part in (self.repo, self.config, self.split) if part)


def parse_hub_id(source: str) -> HubSource | None:
    """The Hub dataset a source names, or None when it is not shaped like a Hub id."""
    match = _HUB_ID.fullmatch(source)
    if match is None:
        return None
    first, second = match["first"], match["second"]
    if second is not None:
        return HubSource(match["repo"], first, second)
    return HubSource(match["repo"], None, first or DEFAULT_SPLIT)


def _offline_reason() -> str:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the dataset is not in the local cache"
    return "no connection (and no local file or folder of that name)"


def _hub_error(source: HubSource, exc: Exception) -> LmmixupError:
    """One line for a Hub dataset that could not be loaded."""
    from datasets.exceptions import DatasetNotFoundError

    if isinstance(exc, DatasetNotFoundError):
        return LmmixupError(
            f"{source.repo}: no such dataset on the Hugging Face Hub, or it is private or "
            "gated (set HF_TOKEN to a token that may read it)"
        )
    if isinstance(exc, ConnectionError):
        return LmmixupError(
            f"cannot reach the Hugging Face Hub for {source}: {_offline_reason()}; download it "
            "where there is a network (`datasets` save_to_disk) and pass the folder"
        )
    return LmmixupError(f"{source}: {exc}")


@dataclass
class LoadedRows:
    """Rows read through `datasets`, with the dataset's licence when its card states one."""

    rows: Iterator[dict]
    license: str | None = None


def load_hub_rows(source: HubSource, streaming: bool = False) -> LoadedRows:
    """The rows of one split of a Hub dataset; `streaming` reads them as they download."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(source.repo, source.config, split=source.split, streaming=streaming)
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        raise _hub_error(source, exc) from exc
    return LoadedRows(_guarded(source, iter(dataset)), _license(dataset))


def _guarded(source: HubSource, rows: Iterator[dict]) -> Iterator[dict]:
    """A stream's rows; a connection lost mid-stream becomes the one-line Hub error."""
    try:
        yield from rows
    except ConnectionError as exc:
        raise _hub_error(source, exc) from exc


def _license(dataset) -> str | None:
    info = getattr(dataset, "info", None)
    return (getattr(info, "license", None) or None) if info is not None else None


def load_local_rows(path: Path) -> LoadedRows:
    """Rows of a local Arrow file or a folder of data files (e.g. a downloaded Hub snapshot)."""
    from datasets import load_dataset

    try:
        if path.is_dir():
            dataset = load_dataset(str(path), split=DEFAULT_SPLIT)
        else:
            dataset = load_dataset("arrow", data_files=str(path), split=DEFAULT_SPLIT)
    except (FileNotFoundError, ValueError) as exc:
        raise LmmixupError(
            f"{path}: `datasets` cannot read it as a dataset ({exc}); pass a data file "
            "(JSONL, JSON, Parquet, CSV) or a folder saved with save_to_disk"
        ) from exc
    return LoadedRows(iter(dataset), _license(dataset))

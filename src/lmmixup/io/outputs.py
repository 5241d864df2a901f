"""Claiming outputs before any work is done.

- No output may be an input (or lie inside an input folder), and no two outputs may be the
  same file: paths are compared resolved, so `./a.jsonl`, `a.jsonl` and a symlink all match.
- Intermediate record files (stage outputs, which resume by appending) are written as JSONL;
  another suffix (e.g. `.parquet`) is refused, not silently written as JSONL. User-facing
  outputs (`data import`, `select`, `decontaminate`, `export`) choose JSONL, Parquet or a saved
  dataset by name or `--format` (`lmmixup.io.formats`).
- One process at a time writes a run directory or an output: a lock file holding the
  writer's PID and host, locked with `flock`. The OS releases the lock when its process dies,
  so the lock of a killed run is taken over; where `flock` is not available the PID alone
  decides (a PID that is not alive on this host is stale).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from lmmixup.errors import LmmixupError

RECORD_SUFFIX = ".jsonl"
RUN_DIR_LOCK = "lmmixup.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)
_held: dict[Path, int] = {}  # lock file -> descriptor, for the locks this process holds


class OutputLockedError(LmmixupError):
    """Another live process is writing the same run directory or output."""


def require_jsonl(paths: Iterable[str | Path]) -> None:
    """Refuse a JSONL-only record output whose name does not end in .jsonl."""
    for path in paths:
        if not str(path).endswith(RECORD_SUFFIX):
            raise LmmixupError(
                f"{path}: records are written as JSONL only here (re-runs resume by appending); "
                f"give the output a name ending in {RECORD_SUFFIX} (`lmmixup select` and "
                "`lmmixup export` write Parquet or a saved dataset)"
            )


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _inside(output: Path, folder: Path) -> bool:
    return folder.is_dir() and output.resolve().is_relative_to(folder.resolve())


def check_outputs(
    inputs: Iterable[str | Path],
    outputs: Iterable[str | Path],
    *,
    records: Iterable[str | Path] = (),
) -> None:
    """Refuse, before any work, an output that is an input or lies inside an input folder,
    two outputs that are the same file, and a record output (`records`) that is not JSONL."""
    require_jsonl(records)
    claimed: list[Path] = []
    for output in map(Path, outputs):
        for earlier in claimed:
            if _same(earlier, output):
                raise LmmixupError(
                    f"{earlier} and {output} are the same file; give each output its own name"
                )
        claimed.append(output)
    for source in map(Path, inputs):
        for output in claimed:
            if _same(source, output) or _inside(output, source):
                raise LmmixupError(
                    f"the output {output} would overwrite the input {source}; "
                    "write the output somewhere else"
                )


def _holder(lock_file: Path) -> tuple[int | None, str]:
    """(PID, host) written in a lock file; (None, '') when it holds none."""
    try:
        pid, _, host = lock_file.read_text(encoding="utf-8").strip().partition(" ")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _locked_error(what: Path, lock_file: Path) -> OutputLockedError:
    pid, host = _holder(lock_file)
    by = f"process {pid}" + (f" on {host}" if host else "") if pid else "another process"
    return OutputLockedError(
        f"{what} is being written by {by} (lock {lock_file}); wait for it to finish or stop "
        "it, then re-run"
    )


def _try_flock(descriptor: int) -> bool | None:
    """True: locked; False: another process holds it; None: no `flock` on this file system."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_FLOCK:
            raise
        return None
    return True


def _held_by_live_process(lock_file: Path) -> bool:
    """Without `flock`: whether the PID in the lock file is another live process on this host."""
    pid, host = _holder(lock_file)
    return bool(pid) and pid != os.getpid() and host == socket.gethostname() and _alive(pid)


def _still_the_lock_file(descriptor: int, lock_file: Path) -> bool:
    """Whether the open descriptor is still the file at `lock_file` (a releasing holder
    removes it between our open and our lock)."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(lock_file))
    except FileNotFoundError:
        return False


def _acquire(lock_file: Path, what: Path) -> int:
    """Open, lock and write our PID and host into `lock_file`; returns its descriptor."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_flock(descriptor)
        if locked is False or (locked is None and _held_by_live_process(lock_file)):
            os.close(descriptor)
            raise _locked_error(what, lock_file)
        if locked is None or _still_the_lock_file(descriptor, lock_file):
            break
        os.close(descriptor)
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return descriptor


@contextmanager
def hold_lock(lock_file: Path, what: Path) -> Iterator[None]:
    """Hold `lock_file` for writing `what`; a process may take a lock it already holds."""
    key = lock_file.resolve()
    if key in _held:
        yield
        return
    _held[key] = _acquire(lock_file, what)
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)  # before closing: no one else holds it yet
        os.close(_held.pop(key))


def run_dir_lock(run_dir: str | Path) -> AbstractContextManager[None]:
    """The lock of a run directory (`lmmixup run`, `lmmixup experiment`)."""
    run_dir = Path(run_dir)
    return hold_lock(run_dir / RUN_DIR_LOCK, run_dir)


def output_lock(output: str | Path) -> AbstractContextManager[None]:
    """The lock of a standalone output: OUTPUT.lock beside it."""
    output = Path(output)
    return hold_lock(output.with_name(output.name + ".lock"), output)


@contextmanager
def claim_outputs(
    inputs: Iterable[str | Path],
    outputs: list[str | Path],
    *,
    records: Iterable[str | Path] = (),
) -> Iterator[None]:
    """`check_outputs`, then hold the lock of every output while the block writes them."""
    check_outputs(inputs, outputs, records=records)
    with ExitStack() as stack:
        for output in outputs:
            stack.enter_context(output_lock(output))
        yield

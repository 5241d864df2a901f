"""A local stand-in for the three Hugging Face Hub endpoints an upload of small files uses.

- `POST /api/repos/create`: records the repo (409 when it exists, as the Hub answers);
- `POST /api/validate-yaml`: 400 unless the README's header (between `---` lines) is a YAML
  mapping (the real Hub also checks the fields it knows);
- `POST /api/{type}s/{owner}/{name}/preupload/{revision}`: answers `regular` for every file,
  so the files travel inside the commit (the real Hub sends large or binary files through
  LFS / Xet storage instead; this stand-in does not implement those);
- `POST /api/{type}s/{owner}/{name}/commit/{revision}`: reads the NDJSON commit (header +
  base64 files) and stores the files.

Point `huggingface_hub` at it with HF_ENDPOINT=server.endpoint and HF_HUB_OFFLINE=0 (or, in
the test's process, `huggingface_hub.constants.ENDPOINT` and `.HF_HUB_OFFLINE`). Every
request is recorded (method, path, Authorization header); an unknown path gets 404.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

_REPO_PATH = re.compile(r"/api/(?P<type>\w+)s/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/\w+")


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class HubState:
    """What the stand-in holds: repos (type, id) -> {path: bytes}, and every request."""

    repos: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    commits: list[dict] = field(default_factory=list)
    cards: list[dict] = field(default_factory=list)


class FakeHubServer:
    """Serve the stand-in on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self) -> None:
        self.state = HubState()
        state = self.state

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet test output
                return

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                state.requests.append(Request("POST", path, self.headers.get("Authorization")))
                if path == "/api/repos/create":
                    self._create(json.loads(body))
                    return
                if path == "/api/validate-yaml":
                    self._validate(json.loads(body)["content"])
                    return
                match = _REPO_PATH.fullmatch(path)
                key = (match["type"], match["repo"]) if match else None
                if key is None or key not in state.repos:
                    self._send(404, {"error": "Repository not found"})
                elif match["op"] == "preupload":
                    files = json.loads(body)["files"]
                    answer = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                    self._send(200, {"files": answer})
                else:
                    self._commit(key, body)

            def _validate(self, content: str) -> None:
                parts = content.split("---\n", 2)
                try:
                    header = yaml.safe_load(parts[1]) if len(parts) == 3 and not parts[0] else None
                except yaml.YAMLError as exc:
                    header = str(exc)
                if isinstance(header, dict):
                    state.cards.append(header)
                    self._send(200, {"errors": [], "warnings": []})
                else:
                    self._send(400, {"errors": [{"message": "no YAML mapping between --- lines"}]})

            def _create(self, payload: dict) -> None:
                repo = f"{payload['organization']}/{payload['name']}"
                key = (payload.get("type") or "model", repo)
                url = f"{server.endpoint}/{key[0]}s/{repo}"
                if key in state.repos:
                    self._send(409, {"error": "You already created this repo", "url": url})
                    return
                state.repos[key] = {}
                self._send(200, {"url": url, "name": repo})

            def _commit(self, key: tuple[str, str], body: bytes) -> None:
                lines = [json.loads(line) for line in body.decode().splitlines() if line]
                header = next(line["value"] for line in lines if line["key"] == "header")
                for line in lines:
                    if line["key"] == "file":
                        value = line["value"]
                        state.repos[key][value["path"]] = base64.b64decode(value["content"])
                state.commits.append(header)
                oid = hashlib.sha1(body).hexdigest()
                url = f"{server.endpoint}/{key[0]}s/{key[1]}/commit/{oid}"
                self._send(200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None})

        server = self
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

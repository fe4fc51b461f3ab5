"""Fixtures of the installed package's tests (python/tests/run.sh runs them in a fresh virtual
environment holding the built wheel and nothing from the source tree).

GPT2C_SOURCE: the source tree, read for its fixture checkpoints and transformers' reference ids
(data only: never on sys.path). GPT2C_SHARED: the shared models (default GPT2C_SOURCE/../shared).
"""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict

import pytest


def _source() -> Path:
    value = os.environ.get("GPT2C_SOURCE")
    if not value:
        raise RuntimeError("GPT2C_SOURCE must name the source tree (python/tests/run.sh sets it)")
    return Path(value).resolve()


@pytest.fixture(scope="session")
def source() -> Path:
    return _source()


@pytest.fixture(scope="session")
def models(source: Path) -> Path:
    return source / "models"


@pytest.fixture(scope="session")
def shared(source: Path) -> Path:
    path = Path(os.environ.get("GPT2C_SHARED", source.parent / "shared")).resolve()
    if not (path / "models" / "tiny-trained").is_dir():
        raise RuntimeError(f"{path}: no models/tiny-trained (set GPT2C_SHARED to the shared folder)")
    return path


@pytest.fixture(scope="session")
def tiny_export(models: Path, tmp_path_factory) -> Path:
    import gpt2c

    out = tmp_path_factory.mktemp("exports") / "tiny-default"
    gpt2c.export(models / "tiny-default", out)
    return out


@pytest.fixture(scope="session")
def trained_export(shared: Path, tmp_path_factory) -> Path:
    import gpt2c

    out = tmp_path_factory.mktemp("exports") / "tiny-trained"
    gpt2c.export(shared / "models" / "tiny-trained", out)
    return out


@pytest.fixture
def hub_stand_in():
    """HubStandIn, the class: `with hub_stand_in({repo: folder}) as hub: ... hub.endpoint`."""
    return HubStandIn

class HubStandIn:
    def __init__(self, repos: Dict[str, Path]) -> None:
        self.repos = repos
        self.requests: list = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hub.requests.append(self.path)
                repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
                revision, _, name = rest.partition("/")
                folder = hub.repos.get(repo)
                if not sep or folder is None:
                    return self.fail("RepoNotFound")
                if revision != "main":
                    return self.fail("RevisionNotFound")
                path = folder / name
                if not name or "/" in name or not path.is_file():
                    return self.fail("EntryNotFound")
                data = path.read_bytes()
                start, end = 0, len(data)
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first, _, last = ranged[len("bytes="):].partition("-")
                    start = int(first or 0)
                    end = min(len(data), int(last) + 1) if last else len(data)
                body = data[start:end]
                self.send_response(206 if ranged else 200)
                self.send_header("etag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("x-repo-commit", hashlib.sha1(repo.encode()).hexdigest())
                self.send_header("content-range", f"bytes {start}-{max(end, 1) - 1}/{len(data)}")
                self.send_header("content-length", str(len(body)))
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def fail(self, code: str) -> None:
                self.send_response(404)
                self.send_header("x-error-code", code)
                self.send_header("content-length", "0")
                self.send_header("connection", "close")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

from __future__ import annotations

import http.server
import importlib.util
import logging
import threading
import warnings
from pathlib import Path

import pytest
import torch

from dmrnet.benchmark import quiet_lightning


def pytest_addoption(parser):
    # pyproject's addopts spread the tests over every core with pytest-xdist (the dev extra);
    # where it is not installed (e.g. a bare GPU machine) its two options are accepted and the
    # tests run in one process
    if importlib.util.find_spec("xdist") is None:
        group = parser.getgroup("xdist", "without pytest-xdist installed: one process")
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=None,
                         help="ignored: pytest-xdist is not installed")
        group._addoption("--dist", dest="dist", default="no",
                         help="ignored: pytest-xdist is not installed")


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    quiet_lightning()
    logging.getLogger("dmrnet").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    torch.manual_seed(0)
    yield


def random_batch(shapes: dict[str, tuple[int, ...]], batch: int = 8, seed: int = 0):
    """Inputs dict and a random availability (every row non-empty)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(batch, *s, generator=g) for m, s in shapes.items()}
    avail = torch.rand(batch, len(shapes), generator=g) > 0.4
    avail[~avail.any(dim=1), 0] = True
    return inputs, avail


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one (and said so)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu_check.sh runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, path)
    return path, marker


@pytest.fixture
def server(payload):
    """A loopback HTTP server offering the payload; records every request it gets."""
    path, _ = payload
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.ckpt", requests
    httpd.shutdown()

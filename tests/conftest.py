from __future__ import annotations

import http.server
import importlib.util
import logging
import os
import re
import threading
import warnings
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the workers already use every core (-n auto); a test's run or subprocess taking every
    # core too would oversubscribe them, and PyTorch's spinning threads then stall at every op
    # (issue 21: 7x on a loaded machine). Tests of the thread choice set or clear it themselves
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from dmrnet.benchmark import quiet_lightning


def pytest_addoption(parser):
    # pyproject's addopts spread the tests over every core with pytest-xdist (the dev extra);
    # where it is not installed (e.g. a bare GPU machine) its options are accepted and the
    # tests run in one process
    if importlib.util.find_spec("xdist") is None:
        group = parser.getgroup("xdist", "without pytest-xdist installed: one process")
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=None,
                         help="ignored: pytest-xdist is not installed")
        group._addoption("--dist", dest="dist", default="no",
                         help="ignored: pytest-xdist is not installed")
        group._addoption("--no-loadscope-reorder", dest="loadscopereorder",
                         action="store_false", help="ignored: pytest-xdist is not installed")


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


# the longest groups of tests (the documents' example chains: about 5 and 3 minutes of CI's 2
# cores), started first so that neither is the last to begin
FIRST = ("tests/test_examples.py:README.md", "tests/test_examples.py:docs/results.md")


def worker_group(nodeid: str) -> str:
    """The tests one pytest-xdist worker takes together: a file's (its module fixtures are
    made once), except the documents' examples, a group per document (each document's
    examples run in order in one folder)."""
    path, _, name = nodeid.partition("::")
    example = re.fullmatch(r"test_example_runs\[(.+):\d+\]", name)
    return f"{path}:{example.group(1)}" if example else path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may not be installed
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` by :func:`worker_group` (xdist's own loadgroup does not group under
    pytest 9.2: pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByFileAndDocument(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ByFileAndDocument(config, log)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device: skipped without one (and said so). The
    longest groups of tests come first (the workers take groups in this order)."""
    items.sort(key=lambda item: FIRST.index(worker_group(item.nodeid))
               if worker_group(item.nodeid) in FIRST else len(FIRST))  # stable
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


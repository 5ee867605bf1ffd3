"""The examples of docs/*.md, run as tests/test_examples.py runs README.md's (see there), in a
file of their own so that a second test worker takes them beside README's."""

from __future__ import annotations

import pytest

from .test_examples import EXAMPLES, Example, check_example, in_docs, sandboxes  # noqa: F401

DOCS = [e for e in EXAMPLES if in_docs(e)]


@pytest.mark.slow
@pytest.mark.parametrize("example", DOCS, ids=[e.id for e in DOCS])
def test_doc_example_runs(example: Example, sandboxes) -> None:  # noqa: F811
    check_example(example, sandboxes)


def test_every_docs_example_is_run_here_or_there():
    from .test_examples import test_example_runs

    readme = next(m for m in test_example_runs.pytestmark if m.name == "parametrize").args[1]
    assert sorted(e.id for e in [*DOCS, *readme]) == sorted(e.id for e in EXAMPLES)

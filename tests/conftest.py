"""Shared fixtures. Tests import helpers from tests/fw as `fw.<module>` (tests/ is on sys.path)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(sys.executable).with_name("harness")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One artifact cache for every end-to-end run of the session: a suite trains and builds once."""
    cache = tmp_path_factory.mktemp("nestbench-cache")
    previous = os.environ.get("NESTBENCH_CACHE")
    os.environ["NESTBENCH_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("NESTBENCH_CACHE", None)
    else:
        os.environ["NESTBENCH_CACHE"] = previous

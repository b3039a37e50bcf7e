"""Where things live. The harness drives firmware sources and platformio.ini from the repository it
is installed from (an editable install), so the repository root is found from this file."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "results" / "baselines"
RUNS = ROOT / "results" / "runs"


def cache_root(out_root: Path) -> Path:
    """Artifacts shared between runs; NESTBENCH_CACHE points several run folders at one cache."""
    env = os.environ.get("NESTBENCH_CACHE")
    return Path(env) if env else out_root / ".cache"

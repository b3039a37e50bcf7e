"""How a single-host farm scales: the quickstart suite on a hardware map of 1, 2 and 3 QEMU stand-in
boards (shard mode, warm cache, so only the measuring is timed), and whether every farm gives the
same instruction counts as the plain run.

    .venv/bin/python benchmarks/farm_throughput.py [--boards 1 2 3]

Prints wall time, the most jobs that ran at once (from run.json's farm timeline) and the boards
used; asserts nothing. On 2 cores, QEMU instances beyond two compete for CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.farm.scheduler import max_concurrency

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(sys.executable).with_name("harness")
SUITE = ROOT / "suites" / "quickstart.yaml"
KEY = ["entry", "format", "level"]


def run(out: Path, cache: Path, hardware_map: Path | None) -> tuple[float, Path, int]:
    env = os.environ | {"NESTBENCH_CACHE": str(cache), "NESTBENCH_LOCK_DIR": str(out / "locks")}
    command = [str(HARNESS), "run", str(SUITE), "--emulator-only", "--out", str(out), "--quiet"]
    if hardware_map is not None:
        command += ["--hardware-map", str(hardware_map)]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout + proc.stderr)
    return wall, sorted((out / "quickstart").iterdir())[-1], proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = root / "cache"
        run(root / "warm-up", cache, None)  # trains and builds once; every timed run below is warm
        plain_wall, plain_dir, rc = run(root / "plain", cache, None)
        plain = pd.read_csv(plain_dir / "records.csv").set_index(KEY)["cycles"]
        print(f"cpu cores: {os.cpu_count()}; suite {SUITE.name}, {len(plain)} rows, warm cache")
        print(f"{'boards':>6}  {'wall s':>7}  {'at once':>7}  {'exit':>4}  same counts  boards used")
        print(f"{'none':>6}  {plain_wall:7.1f}  {1:7d}  {rc:4d}  {'-':11}  local QEMU")
        for n in args.boards:
            hwmap = root / f"map{n}.yaml"
            ids = [f"qemu-{chr(ord('a') + i)}" for i in range(n)]
            hwmap.write_text(
                "boards:\n" + "".join(f"  - {{id: {i}, kind: qemu_mps2_an500}}\n" for i in ids),
                encoding="utf-8",
            )
            wall, run_dir, rc = run(root / f"farm{n}", cache, hwmap)
            frame = pd.read_csv(run_dir / "records.csv")
            sessions = json.loads((run_dir / "run.json").read_text())["farm"]["sessions"]
            same = frame.set_index(KEY)["cycles"].sort_index().equals(plain.sort_index())
            used = ", ".join(f"{b} {c}" for b, c in frame["board"].value_counts().sort_index().items())
            print(f"{n:6d}  {wall:7.1f}  {max_concurrency(sessions):7d}  {rc:4d}  {same!s:11}  {used} rows")


if __name__ == "__main__":
    main()

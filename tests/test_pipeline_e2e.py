"""`harness run` end to end through the real command: train, quantize, generate C, build with
PlatformIO, run in QEMU over a pty, compare with the host reference and the stored baseline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import HARNESS, ROOT

pytestmark = pytest.mark.e2e


def harness(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HARNESS), *args], capture_output=True, text=True, env=env, timeout=600)


def run_folder(out: Path, suite: str) -> Path:
    runs = sorted(p for p in (out / suite).iterdir() if p.is_dir())
    assert runs, f"no run folder under {out / suite}"
    return runs[-1]


@pytest.fixture(scope="module")
def quickstart_runs(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, str]]:
    """The quickstart suite, run twice into one out folder (the second run finds everything cached)."""
    out = tmp_path_factory.mktemp("runs")
    results = []
    for _ in range(2):
        proc = harness("run", str(ROOT / "suites" / "quickstart.yaml"), "--emulator-only", "--out", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results.append((run_folder(out, "quickstart"), proc.stdout))
    return results


def test_quickstart_writes_a_complete_run_folder(quickstart_runs: list[tuple[Path, str]]) -> None:
    run_dir, stdout = quickstart_runs[0]
    for name in ("records.csv", "records.parquet", "run.json", "report.md", "qemu_mps2_an500/uart.log"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["targets"]["qemu_mps2_an500"]["cycle_source"] == "qemu-icount"
    assert info["git"]["sha"]
    assert "qemu-system-arm" in info["tools"]
    assert "bit-exact" in stdout


def test_quickstart_records_are_bit_exact_with_cycles(quickstart_runs: list[tuple[Path, str]]) -> None:
    run_dir, _ = quickstart_runs[0]
    frame = pd.read_parquet(run_dir / "records.parquet")
    csv = pd.read_csv(run_dir / "records.csv")
    assert len(frame) == len(csv) >= 1
    for _, row in frame.iterrows():
        assert row["status"] == "ok", row["error"]  # ok = every device output equals the host reference
        assert row["cycles"] > 0
        assert row["cycle_source"] == "qemu-icount"
        assert row["accuracy_device"] == row["accuracy_host"]
        assert row["accuracy_host"] > (0.95 if row["sparsity"] <= 0.8 else 0.6)
        assert row["samples"] == 360
        assert row["model_bytes"] == row["weight_bytes"] + row["index_bytes"] + row["meta_bytes"]
        per_layer = dict(item.split("=") for item in row["cycles_per_layer"].split(";"))
        assert all(int(v) > 0 for v in per_layer.values())
        assert sum(int(v) for v in per_layer.values()) <= row["cycles"]
        assert row["flash_bytes"] > row["model_bytes"]
        assert row["ram_bytes"] > row["stack_bytes"] > 0


def test_quickstart_compares_the_four_trainers(quickstart_runs: list[tuple[Path, str]]) -> None:
    run_dir, _ = quickstart_runs[0]
    frame = pd.read_csv(run_dir / "records.csv")
    formats = dict(zip(frame["trainer"], frame["format"], strict=False))
    assert formats == {"nested": "nested", "standalone": "csr", "dsnn": "nested", "dense": "dense"}
    for trainer in ("nested", "standalone", "dsnn"):
        rows = frame[frame["trainer"] == trainer].sort_values("level")
        assert rows["sparsity"].tolist() == [0.7, 0.8, 0.9]  # the levels of the suite file
        assert rows["cycles"].is_monotonic_decreasing  # sparser levels run fewer instructions
    nested = frame[frame["trainer"] == "nested"]
    standalone = frame[frame["trainer"] == "standalone"]
    assert nested["model_bytes"].nunique() == 1  # one model serves every level
    assert nested["model_bytes"].iloc[0] < standalone["model_bytes"].sum()  # vs the family of three
    assert nested["model_hash"].nunique() == 1 and standalone["model_hash"].nunique() == 3


def test_second_run_is_cached_and_counts_are_identical(quickstart_runs: list[tuple[Path, str]]) -> None:
    (first, _), (second, stdout) = quickstart_runs
    assert "trained (cached)" in stdout
    a = pd.read_parquet(first / "records.parquet")
    b = pd.read_parquet(second / "records.parquet")
    assert first != second
    assert a["cycles"].tolist() == b["cycles"].tolist()
    assert a["cycles_per_layer"].tolist() == b["cycles_per_layer"].tolist()
    assert a["model_hash"].tolist() == b["model_hash"].tolist()


def test_quickstart_matches_its_committed_baseline(quickstart_runs: list[tuple[Path, str]]) -> None:
    run_dir, stdout = quickstart_runs[0]
    baseline = pd.read_csv(ROOT / "results" / "baselines" / "quickstart" / "qemu_mps2_an500.csv")
    current = pd.read_csv(run_dir / "records.csv")
    keys = ["entry", "format", "level"]
    merged = current.merge(baseline, on=keys, suffixes=("", "_base"))
    assert len(merged) == len(baseline)
    for column in ("cycles", "model_bytes", "weight_bytes", "meta_bytes", "flash_bytes"):
        assert (merged[column] == merged[f"{column}_base"]).all(), column
    assert "regression" not in stdout.lower().replace("no regressions", "")


def test_every_layer_kind_is_bit_exact_in_qemu(shared_cache: Path, tmp_path: Path) -> None:
    """layer_zoo uses every op the firmware has (strided and 1x1 conv, depthwise, pools, residual add,
    relu6, GAP, two linear heads): every output of every sample must equal the host reference."""
    suite = tmp_path / "zoo.yaml"
    suite.write_text(
        "suite: zoo\n"
        "dataset: {name: synthetic, options: {n: 240}}\n"
        "samples: 48\n"
        "targets: [qemu_mps2_an500]\n"
        "measure: {repetitions: 3, warmup: 1, timeout_s: 20}\n"
        "models:\n"
        "  - {name: zoo, arch: layer_zoo, trainer: dense, options: {epochs: 2}}\n"
    )
    proc = harness("run", str(suite), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    frame = pd.read_csv(run_folder(tmp_path / "runs", "zoo") / "records.csv")
    assert frame["status"].tolist() == ["ok"], frame["error"].tolist()
    assert frame["samples"].tolist() == [48]
    layers = frame["cycles_per_layer"][0].split(";")
    assert len(layers) >= 10

"""The UART session stage: check the image's identity, then for each level stream the evaluation
inputs, collect the outputs, and time repeated inferences.

Input is plain data (int8 inputs, the expected identity); output is plain data (`LevelResult`s). The
session itself is opened by a backend (QEMU, Renode, board); this stage only speaks the protocol.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.errors import DeviceError
from harness.protocol import DeviceClient


@dataclass(frozen=True)
class Expected:
    """What the image must report in its handshake; anything else is a wrong or stale image."""

    model_hash: str
    build_id: str
    levels: int
    input_bytes: int
    output_bytes: int
    cycle_source: str


@dataclass
class LevelResult:
    level: int
    outputs: np.ndarray  # int8 [samples, output_bytes]
    cycles: list[int]  # total per timed repetition, in the board's cycle-source units
    layer_cycles: list[int]  # per layer, of the last timed repetition

    @property
    def cycles_median(self) -> int:
        return int(statistics.median(self.cycles))


@dataclass
class SessionResult:
    identity: dict[str, str]
    levels: list[LevelResult]
    stack_bytes: int


def check_identity(hello: dict[str, str], expected: Expected) -> None:
    checks = {
        "model": expected.model_hash,
        "fw": expected.build_id,
        "levels": str(expected.levels),
        "in": str(expected.input_bytes),
        "out": str(expected.output_bytes),
        "cycles": expected.cycle_source,
    }
    wrong = {k: (hello.get(k), v) for k, v in checks.items() if hello.get(k) != v}
    if hello.get("proto") != "1":
        wrong["proto"] = (hello.get("proto"), "1")
    if wrong:
        detail = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise DeviceError(
            f"the device runs a wrong or stale image: {detail}",
            hint="the image on the target is not the one just built; reflash it (a board) or check "
            "that the right ELF is deployed",
        )


def run_session(
    client: DeviceClient,
    expected: Expected,
    inputs: np.ndarray,
    levels: list[int],
    *,
    repetitions: int,
    warmup: int,
    progress: Callable[[int, int], None] | None = None,
) -> SessionResult:
    """Evaluate every input at every level (one inference each, outputs read back), then time
    `repetitions` inferences after `warmup` on the first input and read the per-layer counts."""
    identity = client.hello()
    check_identity(identity, expected)
    flat = inputs.reshape(len(inputs), -1).astype(np.int8)
    total = len(levels) * len(flat)
    done = 0
    results = []
    for level in levels:
        client.select_level(level)
        outputs = np.empty((len(flat), expected.output_bytes), dtype=np.int8)
        for i, sample in enumerate(flat):
            data = sample.tobytes()
            client.load_input(data)
            client.infer(1, 0, zlib.crc32(data))
            out = client.read_output()
            if len(out) != expected.output_bytes:
                raise DeviceError(
                    f"device returned {len(out)} output bytes, expected {expected.output_bytes}"
                )
            outputs[i] = np.frombuffer(out, dtype=np.int8)
            done += 1
            if progress:
                progress(done, total)
        first = flat[0].tobytes()
        client.load_input(first)
        cycles = client.infer(repetitions, warmup, zlib.crc32(first))
        results.append(LevelResult(level, outputs, cycles, client.layer_cycles()))
    stack = client.mem().get("stack", 0)
    return SessionResult(identity=identity, levels=results, stack_bytes=stack)

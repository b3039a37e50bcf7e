"""Does a generated model fit its target? Checked at pack time, before any build.

Flash need = the model's emitted arrays (CodegenResult.storage["model_bytes"]) + its descriptors
(layer and tensor tables, sparse tables, layer names) + the firmware without a model (runtime,
kernels, protocol, start-up). RAM need = the activation arena (with the sparse kernels' scratch) +
the firmware's other static RAM (dense im2col scratch, protocol buffers) + the stack the linker
scripts reserve. The firmware figures are upper bounds measured on the linked images (see
tests/test_pack_sparse.py, which checks them against real builds); the target's sizes come from
its board manifest (targets/platform/boards/*.json: the F767's 2 MB flash and 128 KB DTCM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.errors import InputError
from harness.targets import Target

# Firmware without a model, from the linked qemu_mps2_an500 / nucleo_f767zi images (about 25 KB of
# code and constants, 6 KB of static RAM besides the arena), with headroom for kernel growth.
RUNTIME_FLASH_BYTES = 48 * 1024
RUNTIME_RAM_BYTES = 8 * 1024
STACK_BYTES = 16 * 1024  # __stack_size in targets/firmware/boards/*/link.ld


@dataclass(frozen=True)
class Fit:
    model_bytes: int  # emitted arrays
    descriptor_bytes: int  # tables pointing at them
    flash_need: int
    arena_bytes: int
    ram_need: int
    max_flash: int  # 0 = unknown
    max_ram: int

    @property
    def flash_ok(self) -> bool:
        return self.max_flash <= 0 or self.flash_need <= self.max_flash

    @property
    def ram_ok(self) -> bool:
        return self.max_ram <= 0 or self.ram_need <= self.max_ram


class Generated(Protocol):
    """What the check needs of a generated model: a CodegenResult, or the pipeline's cached copy."""

    @property
    def storage(self) -> dict[str, int]: ...
    @property
    def descriptor_bytes(self) -> int: ...
    @property
    def arena_bytes(self) -> int: ...


def fit(result: Generated, target: Target) -> Fit:
    """The flash and RAM a generated model needs on `target`, and what the target has."""
    model = int(result.storage["model_bytes"])
    flash = model + result.descriptor_bytes + RUNTIME_FLASH_BYTES
    ram = result.arena_bytes + RUNTIME_RAM_BYTES + STACK_BYTES
    return Fit(
        model, result.descriptor_bytes, flash, result.arena_bytes, ram, target.max_flash, target.max_ram
    )


def check_fit(
    result: Generated,
    target: Target,
    *,
    file: Path | str | None = None,
    line: int | None = None,
    field: str | None = None,
) -> None:
    """InputError naming the sizes when the model cannot fit `target`'s flash or RAM."""
    f = fit(result, target)
    problems = []
    if not f.flash_ok:
        problems.append(
            f"flash: needs about {f.flash_need:,} B (model {f.model_bytes:,} B + tables "
            f"{f.descriptor_bytes:,} B + firmware ≤ {RUNTIME_FLASH_BYTES:,} B), {target.name} has "
            f"{f.max_flash:,} B"
        )
    if not f.ram_ok:
        problems.append(
            f"RAM: needs about {f.ram_need:,} B (activation arena {f.arena_bytes:,} B + firmware "
            f"≤ {RUNTIME_RAM_BYTES:,} B + stack {STACK_BYTES:,} B), {target.name} has {f.max_ram:,} B"
        )
    if problems:
        raise InputError(
            "the model does not fit the target: " + "; ".join(problems) + " (use a smaller model, a "
            "sparser or nested format, or a target with more memory)",
            file=file,
            line=line,
            field=field,
        )


__all__ = ["RUNTIME_FLASH_BYTES", "RUNTIME_RAM_BYTES", "STACK_BYTES", "Fit", "check_fit", "fit"]

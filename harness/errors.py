"""Errors that end a command with a documented exit code (DESIGN.md §3).

`InputError` (exit 2) is the user's to fix: it names the file, line and field. `InfraError` (exit 3)
is a tool, build or device failure that is not a regression: it says what failed and what to do.
Neither is shown with a traceback.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_INPUT = 2
EXIT_INFRA = 3


class NestbenchError(Exception):
    exit_code = EXIT_INFRA


class InputError(NestbenchError):
    """Bad input: a suite, a baseline file, a path or an option."""

    exit_code = EXIT_INPUT

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        return f"{where}{field}{self.message}"


class InfraError(NestbenchError):
    """A tool, build or target failed; `hint` says what to do about it."""

    exit_code = EXIT_INFRA

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class DeviceError(InfraError):
    """The device (board or emulator) misbehaved: no answer, bad answers, wrong image."""

    def __init__(self, message: str, *, hint: str | None = None, last_lines: list[str] | None = None) -> None:
        self.last_lines = last_lines or []
        super().__init__(message, hint=hint)


class DeviceTimeout(DeviceError):
    """A command got no complete reply within its timeout (hang, dead link)."""


class DeviceFault(DeviceError):
    """The firmware reported a HardFault; `registers` holds pc, lr, cfsr, ... as ints."""

    def __init__(self, registers: dict[str, int], *, last_lines: list[str] | None = None) -> None:
        self.registers = registers
        regs = " ".join(f"{k}=0x{v:08x}" for k, v in registers.items())
        super().__init__(
            f"firmware fault: {regs}",
            last_lines=last_lines,
            hint="the fault registers locate the crash: look up pc/lr in the ELF "
            "(arm-none-eabi-addr2line -e firmware.elf <pc>)",
        )

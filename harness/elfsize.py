"""Flash and RAM footprint of a linked firmware image, read from its ELF section headers.

Classification (only sections with SHF_ALLOC occupy the device; debug info, symbols and
.ARM.attributes do not):

- **flash** = every allocated section that has contents in the file (anything but SHT_NOBITS):
  vectors, .text, .rodata (weights), .ARM.exidx/.ARM.extab, init/fini arrays, and the load image of
  .data (initialised writable data is stored in flash and copied to RAM at start-up).
- **ram** = every allocated section that is writable or has no contents (SHT_NOBITS): .data (its
  run-time copy, so .data counts in both), .bss, the activation arena, any .noinit.
- **stack_reserved**: a section whose name contains "stack" (`.stack`, `._user_heap_stack`) is the
  reserved stack; it is reported on its own and counted in neither total, since DESIGN.md §3 adds
  the *measured* stack high-water mark to ram instead. A linker script without such a section may
  mark the stack with `__stack_start`/`__stack_end`; that range is then reported as stack and
  subtracted from any RAM section it lies in.
- Thread-local NOBITS sections (.tbss) take no memory of their own and are ignored.

`symbol_sizes` maps every defined data object (STT_OBJECT, size > 0; local statics too) to its size,
so the code generator's accounting of emitted arrays (`nb_w_<layer>`, ...) can be checked against
what the linker kept. A name defined in several files keeps its first definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from harness.errors import InfraError

STACK_SYMBOLS = ("__stack_start", "__stack_end")


@dataclass(frozen=True)
class SectionSize:
    name: str
    address: int
    size: int
    flash: bool  # stored in the image (flash)
    ram: bool  # occupies RAM at run time
    stack: bool  # the reserved stack (in neither total)


@dataclass(frozen=True)
class ElfSizes:
    flash_bytes: int
    ram_bytes: int  # static RAM, without the reserved stack
    stack_reserved: int
    symbol_sizes: dict[str, int] = field(default_factory=dict)
    sections: tuple[SectionSize, ...] = ()


def _is_stack_section(name: str) -> bool:
    return "stack" in name.lower()


def _symbols(elf: ELFFile) -> tuple[dict[str, int], dict[str, int]]:
    """(data object sizes, values of all defined symbols)."""
    objects: dict[str, int] = {}
    values: dict[str, int] = {}
    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        return objects, values
    for sym in symtab.iter_symbols():
        if not sym.name or sym["st_shndx"] == "SHN_UNDEF":
            continue
        values.setdefault(sym.name, int(sym["st_value"]))
        if sym["st_info"]["type"] == "STT_OBJECT" and sym["st_size"] > 0:
            objects.setdefault(sym.name, int(sym["st_size"]))
    return objects, values


def elf_sizes(elf: Path) -> ElfSizes:
    try:
        with elf.open("rb") as fh:
            return _sizes(ELFFile(fh))
    except FileNotFoundError:
        raise InfraError(
            f"no firmware image at {elf}", hint="the build did not produce it: rebuild"
        ) from None
    except (OSError, ELFError) as exc:
        raise InfraError(f"cannot read ELF {elf}: {exc}", hint="the image is damaged: rebuild it") from exc


def _sizes(elf: ELFFile) -> ElfSizes:
    objects, values = _symbols(elf)
    sections: list[SectionSize] = []
    for sec in elf.iter_sections():
        flags = int(sec["sh_flags"])
        size = int(sec["sh_size"])
        if not flags & SH_FLAGS.SHF_ALLOC or size == 0:
            continue
        nobits = sec["sh_type"] == "SHT_NOBITS"
        if nobits and flags & SH_FLAGS.SHF_TLS:
            continue
        stack = _is_stack_section(sec.name)
        sections.append(
            SectionSize(
                name=sec.name,
                address=int(sec["sh_addr"]),
                size=size,
                flash=not stack and not nobits,
                ram=not stack and (nobits or bool(flags & SH_FLAGS.SHF_WRITE)),
                stack=stack,
            )
        )

    flash = sum(s.size for s in sections if s.flash)
    ram = sum(s.size for s in sections if s.ram)
    stack_reserved = sum(s.size for s in sections if s.stack)
    if not stack_reserved and all(n in values for n in STACK_SYMBOLS):
        lo, hi = values[STACK_SYMBOLS[0]], values[STACK_SYMBOLS[1]]
        if hi > lo:
            stack_reserved = hi - lo
            # The stack may be carved out of a RAM section (e.g. the tail of .bss): don't count it twice.
            for s in sections:
                if s.ram:
                    ram -= max(0, min(hi, s.address + s.size) - max(lo, s.address))
    return ElfSizes(
        flash_bytes=flash,
        ram_bytes=ram,
        stack_reserved=stack_reserved,
        symbol_sizes=objects,
        sections=tuple(sections),
    )

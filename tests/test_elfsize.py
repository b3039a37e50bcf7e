"""harness.elfsize against tiny Cortex-M7 images compiled here with arm-none-eabi-gcc, with
`arm-none-eabi-size` (Berkeley format) as the independent oracle for the totals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.elfsize import elf_sizes
from harness.errors import InfraError

GCC = shutil.which("arm-none-eabi-gcc")
SIZE = shutil.which("arm-none-eabi-size")
pytestmark = pytest.mark.skipif(GCC is None or SIZE is None, reason="arm-none-eabi-gcc is not installed")

# Flash at 0x08000000, RAM at 0x20000000; .data is stored in flash and copied to RAM (AT > FLASH).
LINK_WITH_STACK_SECTION = """
MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 64K
         RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = 32K }
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) } > FLASH
  .rodata : { *(.rodata*) } > FLASH
  .data : { *(.data*) } > RAM AT > FLASH
  .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM
  .stack (NOLOAD) : ALIGN(8) { . += STACK_SIZE; } > RAM
}
"""

# No stack section: the stack is the range between two symbols after .bss.
LINK_WITH_STACK_SYMBOLS = """
MEMORY { FLASH (rx) : ORIGIN = 0x08000000, LENGTH = 64K
         RAM (rwx)  : ORIGIN = 0x20000000, LENGTH = 32K }
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) } > FLASH
  .rodata : { *(.rodata*) } > FLASH
  .data : { *(.data*) } > RAM AT > FLASH
  .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM
  __stack_start = ALIGN(8);
  __stack_end = __stack_start + STACK_SIZE;
}
"""

SOURCE = """
#include <stdint.h>
const int8_t nb_w_conv1[W_BYTES] = {1, 2, 3};      /* const: flash only */
const int32_t nb_b_conv1[16] = {7};                /* 64 bytes, flash only */
int32_t scratch[Z_WORDS];                          /* zero-initialised: RAM only */
int16_t table[50] = {1, 2};                        /* initialised: flash (load image) + RAM */
static uint8_t counter_state[12] = {9};            /* a local static object is listed too */
volatile int32_t sink;

void reset_handler(void) {
    int32_t acc = 0;
    for (int i = 0; i < W_BYTES; i++) acc += nb_w_conv1[i];
    for (int i = 0; i < 16; i++) acc += nb_b_conv1[i];
    for (int i = 0; i < Z_WORDS; i++) acc += scratch[i];
    for (int i = 0; i < 50; i++) acc += table[i];
    for (int i = 0; i < 12; i++) acc += counter_state[i];
    sink = acc;
    counter_state[0]++; /* written, so it stays in .data */
    for (;;) {}
}
__attribute__((section(".vectors"), used)) void (*const vectors[2])(void) = {
    (void (*)(void))0x20008000, reset_handler};
"""


def _compile(
    tmp: Path,
    name: str,
    *,
    w_bytes: int = 300,
    z_words: int = 100,
    stack: int = 1024,
    script: str = LINK_WITH_STACK_SECTION,
) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(SOURCE)
    ld = tmp / f"{name}.ld"
    ld.write_text(script.replace("STACK_SIZE", str(stack)))
    elf = tmp / f"{name}.elf"
    subprocess.run(
        [
            GCC,
            "-mcpu=cortex-m7",
            "-mthumb",
            "-O1",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-DW_BYTES={w_bytes}",
            f"-DZ_WORDS={z_words}",
            "-nostdlib",
            "-nostartfiles",
            "-Wl,--entry=reset_handler",
            f"-T{ld}",
            str(src),
            "-o",
            str(elf),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return elf


def _berkeley(elf: Path) -> tuple[int, int, int]:
    out = subprocess.run([SIZE, "-B", str(elf)], check=True, capture_output=True, text=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return text, data, bss


def test_known_arrays_appear_with_their_sizes(tmp_path: Path) -> None:
    sizes = elf_sizes(_compile(tmp_path, "a"))
    assert sizes.symbol_sizes["nb_w_conv1"] == 300
    assert sizes.symbol_sizes["nb_b_conv1"] == 64
    assert sizes.symbol_sizes["scratch"] == 400
    assert sizes.symbol_sizes["table"] == 100
    assert sizes.symbol_sizes["counter_state"] == 12
    assert "reset_handler" not in sizes.symbol_sizes  # functions are not data objects


def test_totals_match_arm_size_and_stack_is_separate(tmp_path: Path) -> None:
    elf = _compile(tmp_path, "a", stack=2048)
    sizes = elf_sizes(elf)
    text, data, bss = _berkeley(elf)  # size puts the NOLOAD stack in bss
    assert sizes.flash_bytes == text + data
    assert sizes.stack_reserved == 2048
    assert sizes.ram_bytes == data + bss - 2048
    by_name = {s.name: s for s in sizes.sections}
    assert by_name[".rodata"].flash and not by_name[".rodata"].ram
    assert by_name[".bss"].ram and not by_name[".bss"].flash
    assert by_name[".data"].flash and by_name[".data"].ram
    assert by_name[".stack"].stack and not (by_name[".stack"].flash or by_name[".stack"].ram)


def test_const_zero_and_initialised_data_are_classified(tmp_path: Path) -> None:
    base = elf_sizes(_compile(tmp_path, "base"))
    more_const = elf_sizes(_compile(tmp_path, "const", w_bytes=1300))
    more_zero = elf_sizes(_compile(tmp_path, "zero", z_words=350))
    # 1000 more const bytes: flash grows by exactly that (plus code alignment at most), RAM not at all.
    assert more_const.ram_bytes == base.ram_bytes
    assert 1000 <= more_const.flash_bytes - base.flash_bytes <= 1008
    # 1000 more zero-initialised bytes: RAM grows, the image does not.
    assert more_zero.ram_bytes - base.ram_bytes == 1000
    assert more_zero.flash_bytes == base.flash_bytes
    # Initialised data counts in both: its load image and its run-time copy.
    data = next(s for s in base.sections if s.name == ".data")
    assert data.size >= 100 + 12
    assert base.flash_bytes >= data.size + 300 + 64
    assert base.ram_bytes >= data.size + 400


def test_stack_marked_by_symbols(tmp_path: Path) -> None:
    elf = _compile(tmp_path, "sym", stack=4096, script=LINK_WITH_STACK_SYMBOLS)
    sizes = elf_sizes(elf)
    text, data, bss = _berkeley(elf)
    assert sizes.stack_reserved == 4096
    assert sizes.ram_bytes == data + bss  # the stack lies outside every section here
    assert sizes.flash_bytes == text + data


def test_not_an_elf_is_an_infra_error(tmp_path: Path) -> None:
    junk = tmp_path / "firmware.elf"
    junk.write_bytes(b"not an elf at all")
    with pytest.raises(InfraError, match="cannot read ELF"):
        elf_sizes(junk)
    with pytest.raises(InfraError, match="no firmware image"):
        elf_sizes(tmp_path / "missing.elf")

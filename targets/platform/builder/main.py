"""SCons build script of the nestbench platform: bare-metal Cortex-M7 firmware with arm-none-eabi-gcc.

Inputs besides platformio.ini:
  NESTBENCH_MODEL_DIR  folder with the generated model (every *.c is compiled, the folder is on the
                       include path); default targets/firmware/model_default
  NESTBENCH_BUILD_ID   firmware build ID compiled in as the string NB_BUILD_ID; default "dev"
  PLATFORMIO_BUILD_DIR PlatformIO's own: the harness gives every build its own folder
The linker script is the board manifest's build.ldscript, relative to the project's src_dir.
"""

import os
import re
import sys

from SCons.Script import AlwaysBuild, Builder, Default, DefaultEnvironment  # pylint: disable=import-error

env = DefaultEnvironment()
board = env.BoardConfig()

TOOL_PREFIX = "arm-none-eabi-"
CPU_FLAGS = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"]


def _fail(message):
    sys.stderr.write(f"Error: {message}\n")
    env.Exit(1)


env.Replace(
    AR=TOOL_PREFIX + "gcc-ar",
    AS=TOOL_PREFIX + "as",
    CC=TOOL_PREFIX + "gcc",
    CXX=TOOL_PREFIX + "g++",
    GDB=TOOL_PREFIX + "gdb",
    OBJCOPY=TOOL_PREFIX + "objcopy",
    RANLIB=TOOL_PREFIX + "gcc-ranlib",
    SIZETOOL=TOOL_PREFIX + "size",
    ARFLAGS=["rc"],
    PROGNAME="firmware",
    PROGSUFFIX=".elf",
    # Flash = what is loaded from the image (vectors, code, constants incl. the model's weights, the
    # load image of .data); RAM = .data + .bss (arena included) + the reserved stack section.
    SIZEPROGREGEXP=r"^(?:\.isr_vector|\.text|\.rodata|\.ARM\.extab|\.ARM\.exidx|\.data)\s+(\d+).*",
    SIZEDATAREGEXP=r"^(?:\.data|\.bss|\.stack)\s+(\d+).*",
    SIZECHECKCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPRINTCMD="$SIZETOOL -B -d $SOURCES",
)

env.Append(
    ASFLAGS=[*CPU_FLAGS, "-x", "assembler-with-cpp"],
    CFLAGS=["-std=c11"],
    CCFLAGS=[
        *CPU_FLAGS,
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-ffunction-sections",
        "-fdata-sections",
        "-fno-common",
    ],
    LINKFLAGS=[
        *CPU_FLAGS,
        "-Wl,--gc-sections",
        "-nostartfiles",
        "--specs=nano.specs",
        "-Wl,-Map," + os.path.join("$BUILD_DIR", "firmware.map"),
        "-Wl,--no-warn-rwx-segments",
    ],
    # newlib-nano gives memcpy/memset; there is deliberately no _sbrk, so malloc cannot link.
    LIBS=["c", "gcc"],
)

# Linker script ---------------------------------------------------------------------------------
src_dir = env.subst("$PROJECT_SRC_DIR")
ldscript = board.get("build.ldscript", "")
if not ldscript:
    _fail(f"board {env.subst('$BOARD')} has no build.ldscript")
if not os.path.isabs(ldscript):
    ldscript = os.path.join(src_dir, ldscript)
if not os.path.isfile(ldscript):
    _fail(f"linker script {ldscript} not found")
env.Replace(LDSCRIPT_PATH=ldscript)

# Model and build ID -------------------------------------------------------------------------------
model_dir = os.environ.get("NESTBENCH_MODEL_DIR") or os.path.join(src_dir, "model_default")
model_dir = os.path.abspath(os.path.join(env.subst("$PROJECT_DIR"), model_dir))
if not os.path.isdir(model_dir):
    _fail(f"NESTBENCH_MODEL_DIR {model_dir} is not a folder")
if not any(name.endswith(".c") for name in os.listdir(model_dir)):
    _fail(f"NESTBENCH_MODEL_DIR {model_dir} holds no .c file (expected the generated model.c)")

build_id = os.environ.get("NESTBENCH_BUILD_ID") or "dev"
if not re.fullmatch(r"[A-Za-z0-9._+-]{1,64}", build_id):
    _fail(f"NESTBENCH_BUILD_ID {build_id!r}: use 1-64 characters from [A-Za-z0-9._+-]")

env.Append(
    CPPPATH=[
        os.path.join(src_dir, "core"),
        os.path.join(src_dir, "arch", "armv7m"),
        model_dir,
    ],
    CPPDEFINES=[
        ("NB_BUILD_ID", env.StringifyMacro(build_id)),
    ],
)
env.BuildSources(os.path.join("$BUILD_DIR", "model"), model_dir, "+<*.c>")

# Program ------------------------------------------------------------------------------------------
env.Append(
    BUILDERS=dict(
        ElfToBin=Builder(
            action=env.VerboseAction("$OBJCOPY -O binary $SOURCES $TARGET", "Building $TARGET"),
            suffix=".bin",
        )
    )
)

target_elf = env.BuildProgram()
target_bin = env.ElfToBin(os.path.join("$BUILD_DIR", "${PROGNAME}"), target_elf)

AlwaysBuild(env.Alias("nobuild", target_bin))
target_buildprog = env.Alias("buildprog", target_bin, target_bin)

env.AddPlatformTarget(
    "size",
    target_elf,
    env.VerboseAction("$SIZEPRINTCMD", "Calculating size $SOURCE"),
    "Program Size",
    "Calculate program size",
)

# Upload through pyOCD's CLI for people working by hand; the harness flashes with pyOCD's Python API.
pyocd_target = board.get("debug.pyocd_target", "")
if pyocd_target:
    env.Replace(UPLOADCMD=f'"$PYTHONEXE" -m pyocd flash -t {pyocd_target} $SOURCE')
    env.AddPlatformTarget(
        "upload", target_elf, env.VerboseAction("$UPLOADCMD", "Uploading $SOURCE"), "Upload"
    )

Default([target_buildprog])

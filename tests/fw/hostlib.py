"""Build the firmware's portable core + a model folder into a host shared library, and call it.

The source list lives here and in targets/firmware/boards/host/README.md: the core's .c files except
main.c, nb_protocol.c and nb_stack.c (UART / linker-symbol bound), the host board folder, and every .c
of the model folder. Importable from other tests by path (it depends only on the standard library
and NumPy).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "targets" / "firmware"
CORE = FIRMWARE / "core"
HOST_BOARD = FIRMWARE / "boards" / "host"
DEVICE_ONLY = {"main.c", "nb_protocol.c", "nb_stack.c"}
CFLAGS = ["-shared", "-fPIC", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]


def host_sources(model_dir: Path) -> list[Path]:
    core = [p for p in sorted(CORE.glob("*.c")) if p.name not in DEVICE_ONLY]
    return [*core, *sorted(HOST_BOARD.glob("*.c")), *sorted(Path(model_dir).glob("*.c"))]


def build_host_lib(model_dir: Path, out: Path) -> Path:
    """Compile the host library for the model in `model_dir`; `out` is the .so path (or a folder,
    which then gets `libnbhost.so`). Raises RuntimeError with gcc's messages on failure."""
    model_dir = Path(model_dir)
    out = Path(out)
    if out.is_dir() or out.suffix != ".so":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "libnbhost.so"
    out.parent.mkdir(parents=True, exist_ok=True)
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no host C compiler (gcc) on PATH")
    sources = host_sources(model_dir)
    if not any(p.parent == model_dir for p in sources):
        raise RuntimeError(f"{model_dir} holds no .c file")
    cmd = [gcc, *CFLAGS, f"-I{CORE}", f"-I{HOST_BOARD}", f"-I{model_dir}", "-o", str(out), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"host build failed:\n{proc.stderr.strip()}")
    return out


class HostModel:
    """ctypes wrapper around a built host library."""

    def __init__(self, lib_path: Path) -> None:
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.nb_host_infer.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
        self.lib.nb_host_infer.restype = ctypes.c_int
        self.lib.nb_host_infer_until.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_uint32,
        ]
        self.lib.nb_host_infer_until.restype = ctypes.c_int
        for name in ("nb_host_input_bytes", "nb_host_output_bytes", "nb_host_arena_bytes"):
            getattr(self.lib, name).restype = ctypes.c_uint32
        for name in ("nb_host_levels", "nb_host_layers"):
            getattr(self.lib, name).restype = ctypes.c_uint
        for name in ("nb_host_model_hash", "nb_host_model_name"):
            getattr(self.lib, name).restype = ctypes.c_char_p
        self.input_bytes = int(self.lib.nb_host_input_bytes())
        self.output_bytes = int(self.lib.nb_host_output_bytes())
        self.levels = int(self.lib.nb_host_levels())
        self.layers = int(self.lib.nb_host_layers())
        self.model_hash = self.lib.nb_host_model_hash().decode()

    def infer(self, x: np.ndarray, level: int = 0) -> np.ndarray:
        data = np.ascontiguousarray(x, dtype=np.int8).reshape(-1)
        if data.size != self.input_bytes:
            raise ValueError(f"input has {data.size} bytes, the model takes {self.input_bytes}")
        out = np.zeros(self.output_bytes, np.int8)
        status = self.lib.nb_host_infer(data.ctypes.data, out.ctypes.data, level)
        if status != 0:
            raise RuntimeError(f"nb_host_infer returned {status}")
        return out

    def infer_until(self, x: np.ndarray, n_layers: int, level: int = 0, cap: int = 1 << 20) -> np.ndarray:
        data = np.ascontiguousarray(x, dtype=np.int8).reshape(-1)
        out = np.zeros(cap, np.int8)
        size = self.lib.nb_host_infer_until(data.ctypes.data, level, n_layers, out.ctypes.data, cap)
        if size < 0:
            raise RuntimeError(f"nb_host_infer_until returned {size}")
        return out[:size]

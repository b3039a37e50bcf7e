#!/usr/bin/env bash
# nestbench entry point for people and CI.
#   ./dev.sh quickstart   set everything up, then run suites/quickstart.yaml in the QEMU emulator
#   ./dev.sh test         set everything up, then run the test suite
#   ./dev.sh setup        only set up (system packages, .venv, offline PlatformIO)
#   ./dev.sh lint         ruff + mypy
# Every step is idempotent; a second run only checks and is quick.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"   # the CPU build; an unpinned torch drags in GBs of CUDA packages
STAMP="$VENV/.nestbench-setup"

say() { printf '\033[1m[nestbench]\033[0m %s\n' "$*"; }
die() { printf '[nestbench] error: %s\n' "$*" >&2; exit 3; }

system_packages() {
  local missing=()
  command -v arm-none-eabi-gcc >/dev/null 2>&1 || missing+=(gcc-arm-none-eabi)
  # newlib ships the C library the firmware links (memcpy/memset); gcc alone does not have it.
  if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 \
     || [ ! -f "$(arm-none-eabi-gcc -mcpu=cortex-m7 -mthumb -print-file-name=libc_nano.a)" ]; then
    missing+=(libnewlib-arm-none-eabi)
  fi
  command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
  "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] && return 0

  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and this system has no apt-get.
  Install the GNU Arm toolchain with newlib (arm-none-eabi-gcc), qemu-system-arm and Python's venv
  module with your package manager, then run this command again."
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}: run as root or install sudo."
    sudo=(sudo)
  fi
  say "installing system packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq || die "apt-get update failed (see above)"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed (see above)"
}

python_env() {
  local want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/dev.sh" | sha256sum | cut -c1-16)"
  if [ -x "$VENV/bin/harness" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  say "creating the Python environment in .venv (pip output: .venv/pip.log)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "could not create $VENV"
  local log="$VENV/pip.log"
  : > "$log"
  pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >> "$log" 2>&1 \
      || { tail -n 30 "$log" >&2; die "pip install $* failed (full output: $log)"; }
  }
  pip_install --upgrade pip
  pip_install "$TORCH_PIN"
  pip_install -e "$ROOT[dev]"
  echo "$want" > "$STAMP"
}

setup() {
  system_packages
  python_env
  # Offline PlatformIO: project-local core dir, tool-scons from PyPI's scons wheel (DESIGN §5).
  "$VENV/bin/harness" setup
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  setup) setup ;;
  quickstart) setup; exec "$VENV/bin/harness" run "$ROOT/suites/quickstart.yaml" --emulator-only "$@" ;;
  test) setup; cd "$ROOT"; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) setup; cd "$ROOT"; "$VENV/bin/ruff" check . && "$VENV/bin/ruff" format --check . && "$VENV/bin/mypy" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac

#!/bin/sh
# Flash script for labgrid's FlashScriptDriver: runs on the exporter host the board hangs off.
# usage: pyocd-flash.sh PROBE_UID PYOCD_TARGET ELF
# The UID pins the probe exactly (flashing the wrong board is the classic farm failure).
set -eu
exec pyocd flash --uid "$1" --target "$2" --format elf "$3"

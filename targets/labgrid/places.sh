#!/bin/sh
# Make one labgrid place per exporter group, for nestbench: named after the group, matching every
# resource of the group, tagged kind=<target name from platformio.ini> (docs/farm_labgrid.md).
#
# usage: LG_COORDINATOR=HOST:PORT places.sh EXPORTER KIND GROUP [GROUP...]
#   e.g. LG_COORDINATOR=coordinator.lab:20408 targets/labgrid/places.sh lab-pi-3 nucleo_f767zi nucleo-1 nucleo-2
#
# Places that exist already keep their matches and only get the tag. Add further tags by hand, e.g.
# the probe UID of a board flashed with pyOCD: labgrid-client -p nucleo-2 set-tags probe=0670FF38...
set -eu
if [ $# -lt 3 ]; then
    echo "usage: places.sh EXPORTER KIND GROUP [GROUP...]" >&2
    exit 2
fi
exporter=$1
kind=$2
shift 2
existing=$(labgrid-client places | awk '{print $1}')
for group in "$@"; do
    if ! printf '%s\n' "$existing" | grep -qx "$group"; then
        labgrid-client -p "$group" create
        labgrid-client -p "$group" add-match "$exporter/$group/*"
    fi
    labgrid-client -p "$group" set-tags "kind=$kind"
done
labgrid-client places

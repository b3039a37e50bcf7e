"""Board farms: many boards, one worker each, a lock each (docs/farm.md).

- `boards`: a Board, a BoardSource (where boards come from and how one is claimed).
- `hwmap`: the single-host source, a hardware-map file; `locks`: the per-board host-wide locks.
- `labgrid_source`: the multi-host source, places of a labgrid coordinator; `labgrid_drivers`: the
  flash driver a place calls for; `standin`: a QEMU instance standing in for a board on a labgrid
  exporter host.
- `scheduler`: one worker per board; jobs sharded over the boards of a kind or repeated on each.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from harness import targets
from harness.errors import InputError
from harness.farm.boards import BoardSource


def open_source(
    *,
    hardware_map: Path | None,
    labgrid: str | None,
    all_targets: Mapping[str, targets.Target],
    command: str = "",
) -> BoardSource | None:
    """The board source a run's options name (None: no farm). A bad hardware map is an InputError,
    an unreachable coordinator an InfraError, both before any work."""
    if hardware_map is not None and labgrid is not None:
        raise InputError("use either --hardware-map or --labgrid, not both", field="--labgrid")
    if hardware_map is not None:
        from harness.farm.hwmap import HardwareMapSource

        if not hardware_map.is_file():
            raise InputError("no such hardware map file", file=hardware_map, field="--hardware-map")
        return HardwareMapSource(hardware_map, all_targets, command=command)
    if labgrid is not None:
        from harness.farm.labgrid_source import LabgridSource, parse_address

        parse_address(labgrid)  # a malformed address is bad input, before connecting
        return LabgridSource(labgrid, all_targets, command=command)
    return None


__all__ = ["open_source"]

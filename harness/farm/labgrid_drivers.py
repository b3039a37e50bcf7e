"""labgrid classes for the QEMU stand-in boards, and the choice of flash driver for a place.

Importing this module registers `NestbenchStandIn` (a resource: the stand-in agent's flasher port)
and `StandInDriver` (a labgrid BootstrapProtocol driver that loads an ELF through it) with labgrid's
target factory, so a place exporting them is used like any other. A place's flash driver is picked
from the resources it exports:

==========================  =====================================================================
resource                    driver
==========================  =====================================================================
NetworkUSBDebugger          labgrid's OpenOCDDriver (OpenOCD from Debian) on the exporter host:
                            ``program <elf> verify``, ``reset run``; board config from the place's
                            ``openocd_board`` tag (default st_nucleo_f7.cfg, which brings
                            its ST-LINK interface), an ``openocd_interface`` tag if needed
NetworkUSBFlashableDevice   labgrid's FlashScriptDriver running pyOCD on the exporter host
                            (targets/labgrid/pyocd-flash.sh; probe UID from the ``probe`` tag)
NestbenchStandIn            `StandInDriver`: a QEMU stand-in (harness.farm.standin)
==========================  =====================================================================

How a custom class gets onto the farm (verified in labgrid 26.0.1, labgrid/remote/exporter.py
``Exporter.add_resource``): the exporter looks a config entry's class up in its ``exports`` table
(USBSerialPort → ser2net, USBDebugger, ...) and publishes any class it has no export code for as a
static `ResourceEntry` — its parameters as written, always available — which is how the stand-in's
``NetworkSerialPort`` and ``NestbenchStandIn`` entries reach the coordinator unchanged. Only the
client must know the class, to build the resource (`target_factory.make_resource`): this module.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attr
from labgrid.driver import FlashScriptDriver, OpenOCDDriver
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.protocol import BootstrapProtocol
from labgrid.resource.common import NetworkResource
from labgrid.step import step
from labgrid.util.managedfile import ManagedFile
from labgrid.util.proxy import proxymanager

from harness.farm import standin
from harness.paths import ROOT

PYOCD_SCRIPT = ROOT / "targets" / "labgrid" / "pyocd-flash.sh"
OPENOCD_LOAD = ["init", "reset halt", "program {filename} verify", "reset run", "shutdown"]
DEFAULT_OPENOCD_BOARD = "st_nucleo_f7.cfg"
FLASHERS = ("NestbenchStandIn", "NetworkUSBDebugger", "NetworkUSBFlashableDevice")
# labgrid keeps process-wide state that is not thread-safe: its step log (`labgrid.step.steps`, one
# stack pushed and popped by every @step driver method: two workers flashing at once trip its
# assertions) and the RemotePlaceManager's resource list. Workers build their places' resources,
# flash and open serial ports one at a time; flashing is short next to a measurement.
LABGRID_LOCK = threading.Lock()


@target_factory.reg_resource
@attr.s(eq=False)
class NestbenchStandIn(NetworkResource):
    """The flasher port of a QEMU stand-in agent on the exporter host."""

    port = attr.ib(validator=attr.validators.instance_of(int))


@target_factory.reg_driver
@attr.s(eq=False)
class StandInDriver(Driver, BootstrapProtocol):
    """Loads an image into a stand-in board: the agent restarts its QEMU with the ELF."""

    bindings = {"flasher": "NestbenchStandIn"}  # noqa: RUF012 (labgrid's class attribute)
    timeout = attr.ib(default=30.0, validator=attr.validators.instance_of(float))

    @Driver.check_active
    @step(args=["filename"])
    def load(self, filename: str) -> str:
        host, port = proxymanager.get_host_and_port(self.flasher)
        return standin.load_image(host, int(port), Path(filename), timeout_s=self.timeout)


class PyocdFlasher:
    """pyOCD through labgrid's FlashScriptDriver: the ELF is copied to the exporter host, then the
    script runs there with the probe UID, the pyOCD target and the ELF's path."""

    def __init__(self, target: Any, pyocd_target: str, probe: str) -> None:
        self.device = target.get_resource("NetworkUSBFlashableDevice")
        self.driver = FlashScriptDriver(target, name=None, script=str(PYOCD_SCRIPT))
        self.target = target
        self.pyocd_target = pyocd_target
        self.probe = probe

    def load(self, filename: str) -> None:
        self.target.activate(self.driver)
        image = ManagedFile(filename, self.device)
        image.sync_to_resource()
        self.driver.flash(args=[self.probe, self.pyocd_target, image.get_remote_path()])


def make_flasher(
    target: Any, classes: set[str], tags: Mapping[str, str], pyocd_target: str
) -> tuple[Any, str]:
    """(an object with `load(filename)`, its description) for a labgrid Target holding a place's
    resources. ValueError when the place exports nothing that can flash."""
    if "NestbenchStandIn" in classes:
        # built by name, as a labgrid environment file would (the class registered above)
        driver = target_factory.make_driver(target, "StandInDriver", None, {})
        target.activate(driver)
        return driver, "stand-in flasher"
    if "NetworkUSBDebugger" in classes:
        board = tags.get("openocd_board", DEFAULT_OPENOCD_BOARD)
        interface = tags.get("openocd_interface") or None
        driver = OpenOCDDriver(
            target, name=None, board_config=board, interface_config=interface, load_commands=OPENOCD_LOAD
        )
        target.activate(driver)
        return driver, f"OpenOCD (board/{board})"
    if "NetworkUSBFlashableDevice" in classes:
        probe = tags.get("probe", "")
        if not probe:
            raise ValueError("a place flashed with pyOCD needs a `probe` tag (the probe's unique ID)")
        return PyocdFlasher(target, pyocd_target, probe), f"pyOCD via flash script (probe {probe})"
    raise ValueError(f"the place exports no flasher (one of {', '.join(FLASHERS)})")


__all__ = ["FLASHERS", "LABGRID_LOCK", "NestbenchStandIn", "PyocdFlasher", "StandInDriver", "make_flasher"]

"""PlatformIO development platform for nestbench (see builder/main.py for the build itself).

PlatformIO looks the class up by name: platform.json "name" = "nestbench" -> NestbenchPlatform.
"""

from platformio.public import PlatformBase


class NestbenchPlatform(PlatformBase):
    # No packages to install: the toolchain is the arm-none-eabi-gcc on PATH (Debian's
    # gcc-arm-none-eabi + libnewlib-arm-none-eabi), so nothing here needs the registry.
    pass

"""Resolution of the `device` a suite asks for into a concrete torch device string."""

from __future__ import annotations

import torch


def resolve_device(device: str = "auto") -> str:
    """ "auto" → "cuda" when a CUDA device is usable, else "cpu"; explicit names are checked.

    Raises ValueError for a malformed name or a device that is not available on this machine.
    """
    name = device.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} requested but no CUDA device is available here (use cpu or auto)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} requested but MPS is not available here (use cpu or auto)")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    return str(dev)

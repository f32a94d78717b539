"""The device a worker runs its model on: the config's ``device``, with ``auto`` resolved for the machine at hand.

One rule for every runtime (text, image, audio): ``auto`` is the first CUDA GPU when torch sees one, else the CPU;
``cuda`` and ``cuda:N`` name a GPU and fail at start when there is none, rather than run somewhere unexpected.
"""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DeviceError(f"device={name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} but torch sees no CUDA GPU on this machine (torch {torch.__version__})")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


def free_memory(device: torch.device) -> int:
    """Bytes free for new allocations on ``device`` right now (MemAvailable for the CPU)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

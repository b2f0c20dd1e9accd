"""The compute device a run uses."""

from __future__ import annotations

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` → the first CUDA device when present, else the CPU; `cuda` without a GPU fails."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"runtime.device is {spec!r} but no CUDA device is available")
    return device

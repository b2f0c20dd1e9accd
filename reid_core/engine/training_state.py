"""Resumable training state: everything needed to continue a run bit for bit.

Saved as one file through `torch.save` of plain tensors and containers, and read back with
`weights_only=True`, so a state file cannot run code when loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from reid_core.atomic import atomic_output

STATE_FILE = "last.pt"


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `directory/last.pt` atomically (a kill mid-write keeps the old one)."""
    dest = Path(directory) / STATE_FILE
    with atomic_output(dest) as tmp:
        torch.save(state, tmp)
    return dest


def load_state(directory: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when `directory` has none."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)

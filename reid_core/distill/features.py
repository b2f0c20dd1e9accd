"""Intermediate feature maps of a model, captured by forward hooks during its normal forward."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureTap:
    """Keeps the latest output of each named submodule (e.g. "backbone", "backbone.layer3").

    The model's forward is unchanged, so the trainer's own forward pass of the student also
    fills the tap; `close()` removes the hooks.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            some = ", ".join(n for n in list(modules)[1:12])
            raise ValueError(
                f"{type(model).__name__} has no submodule {unknown}; names look like: {some}, …"
            )
        self.model = model
        self.names = list(names)
        self._latest: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[name].register_forward_hook(self._keeper(name)) for name in self.names
        ]

    def _keeper(self, name: str):
        def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ValueError(
                    f"feature distillation needs N×C×H×W maps; '{name}' gives "
                    f"{getattr(output, 'shape', type(output).__name__)}"
                )
            self._latest[name] = output

        return keep

    def outputs(self) -> list[torch.Tensor]:
        """The maps of the last forward pass, in the order of `names`."""
        missing = [n for n in self.names if n not in self._latest]
        if missing:
            raise RuntimeError(f"no forward pass has reached {missing} yet")
        maps = [self._latest[n] for n in self.names]
        self._latest = {}  # one forward's maps are read once: no stale maps, no held memory
        return maps

    def channels(self, image_size: tuple[int, int]) -> list[int]:
        """Channels of each tapped map, from one forward pass of a blank image."""
        param = next(self.model.parameters())
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            self.model(torch.zeros(2, 3, *image_size, device=param.device, dtype=param.dtype))
        self.model.train(was_training)
        return [m.shape[1] for m in self.outputs()]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._latest = {}

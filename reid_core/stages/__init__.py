"""The pipeline stages, declared once.

Each stage is a module here with `run(config, inputs, outputs) -> metrics`, where inputs and
outputs map port names to paths. `STAGES` declares every stage's ports; the `reid` CLI builds
its subcommands from it, dvc.yaml and the KFP components in `components/` pass the same ports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reid_core.config import ReidConfig

StageFn = Callable[[ReidConfig, Mapping[str, Path], Mapping[str, Path]], dict[str, float]]


@dataclass(frozen=True)
class Port:
    name: str
    kind: Literal["dir", "file"]
    help: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    help: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    def load(self) -> StageFn:
        return importlib.import_module(f"reid_core.stages.{self.name}").run


_DATASET = Port("dataset", "dir", "dataset folder (Market-1501 or another supported layout)")
_MANIFEST = Port("manifest", "file", "manifest Parquet written by preprocess")
_MODEL = Port("model", "dir", "checkpoint folder (safetensors + config + metadata)")
_CHECKPOINT = Port("checkpoint", "dir", "checkpoint folder to write")
_METRICS = Port("metrics", "file", "metrics JSON to write")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "preprocess",
            "read a dataset, write its manifest and validate it",
            (_DATASET,),
            (_MANIFEST, Port("report", "file", "validation report JSON to write")),
        ),
        StageSpec(
            "train",
            "train the teacher on the manifest's train split",
            (_DATASET, _MANIFEST),
            (_CHECKPOINT, _METRICS),
        ),
        StageSpec(
            "distill",
            "train a smaller student from a teacher's logits",
            (_DATASET, _MANIFEST, Port("teacher", "dir", "teacher checkpoint folder")),
            (_CHECKPOINT, _METRICS),
        ),
        StageSpec(
            "adapt",
            "pseudo-label rounds on an unlabelled target domain",
            (_DATASET, _MANIFEST, _MODEL),
            (_CHECKPOINT, _METRICS),
        ),
        StageSpec(
            "evaluate",
            "rank the gallery for every query: CMC, mAP, mINP",
            (_DATASET, _MANIFEST, _MODEL),
            (_METRICS, Port("features", "file", "query and gallery features (.npz) to write")),
        ),
        StageSpec(
            "export",
            "ONNX export with an ONNX Runtime parity gate",
            (_DATASET, _MANIFEST, _MODEL),
            (Port("onnx", "dir", "folder for model.onnx and parity.json"),),
        ),
        StageSpec(
            "promote",
            "register the model, move the champion alias, publish to Triton",
            (
                Port("onnx", "dir", "export folder (model.onnx + parity.json)"),
                _MODEL,
                Port("evaluation", "file", "metrics JSON of evaluate on this model"),
            ),
            (Port("decision", "file", "promotion decision JSON to write"),),
        ),
    )
}


def run_stage(
    name: str,
    config: ReidConfig,
    inputs: Mapping[str, str | Path],
    outputs: Mapping[str, str | Path],
) -> dict[str, float]:
    """Check ports against the declaration, then run the stage."""
    spec = STAGES[name]
    expected_in = {p.name for p in spec.inputs}
    expected_out = {p.name for p in spec.outputs}
    if set(inputs) != expected_in or set(outputs) != expected_out:
        raise ValueError(
            f"stage {name} takes inputs {sorted(expected_in)} and outputs {sorted(expected_out)}"
        )
    _fast_cpu_numerics()
    for port in spec.inputs:
        path = Path(inputs[port.name])
        ok = path.is_dir() if port.kind == "dir" else path.is_file()
        if not ok:
            raise FileNotFoundError(f"{name}: input '{port.name}' is not a {port.kind}: {path}")
    return spec.load()(
        config,
        {k: Path(v) for k, v in inputs.items()},
        {k: Path(v) for k, v in outputs.items()},
    )


def _fast_cpu_numerics() -> None:
    """Flush denormal floats to zero: tiny activations otherwise slow CPU kernels tenfold+."""
    import torch

    torch.set_flush_denormal(True)

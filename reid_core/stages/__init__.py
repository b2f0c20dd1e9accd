"""The pipeline stages, declared once.

Each stage is a module here with `run(config, inputs, outputs) -> metrics`, where inputs and
outputs map port names to paths. `STAGES` declares every stage's ports; the `reid` CLI builds
its subcommands from it, dvc.yaml and the KFP components in `components/` pass the same ports.

A port declared `multiple` takes one or more paths, in order, and reaches the stage as a tuple
of paths. A stage's multiple inputs pair up element by element (evaluate's i-th dataset goes
with its i-th manifest), so `run_stage` requires them to have the same count.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reid_core.config import ReidConfig
from reid_core.tracking.model_uri import is_model_uri

PortPaths = Mapping[str, Path | tuple[Path, ...]]
"""Port name -> its path, or its tuple of paths for a `multiple` port."""
StageFn = Callable[[ReidConfig, PortPaths, PortPaths], dict[str, float]]


class PortError(ValueError):
    """The paths given to a stage do not fit its declared ports (names, counts, pairing)."""


@dataclass(frozen=True)
class Port:
    name: str
    kind: Literal["dir", "file", "model"]  # model: a checkpoint folder or an MLflow model URI
    help: str
    multiple: bool = False  # one or more paths, in order (the CLI option is repeatable)


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
_TEST_DATASET = Port(
    "dataset",
    "dir",
    "test set dataset folder; repeatable, one per --manifest, in the same order "
    "(the first test set is the primary one)",
    multiple=True,
)
_TEST_MANIFEST = Port(
    "manifest",
    "file",
    "test set manifest written by preprocess; repeatable, one per --dataset",
    multiple=True,
)
_MODEL = Port("model", "dir", "checkpoint folder (safetensors + config + metadata)")
_CHECKPOINT = Port("checkpoint", "dir", "checkpoint folder to write")
_METRICS = Port("metrics", "file", "metrics JSON to write")

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "fetch",
            "fetch the dataset datasets.<data.domain> names (the source one by default)",
            (),
            (Port("dataset", "dir", "dataset folder to write (with .fetch.json, its record)"),),
        ),
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
            "train a smaller student from one or more frozen teachers",
            (
                _DATASET,
                _MANIFEST,
                Port(
                    "teacher",
                    "model",
                    "teacher checkpoint folder or MLflow URI (models:/name@alias, "
                    "models:/name/version, runs:/id/checkpoint); repeatable",
                    multiple=True,
                ),
            ),
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
            "rank the gallery for every query of one or more test sets: CMC, mAP, mINP, ROC",
            (_TEST_DATASET, _TEST_MANIFEST, _MODEL),
            (
                Port("metrics", "file", "metrics JSON to write (flat keys: the primary test set)"),
                Port("features", "dir", "folder for each test set's features (<name>.npz)"),
                Port("report", "dir", "folder for metrics.md, report.html and the PNG reports"),
            ),
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
            (
                Port("decision", "file", "promotion decision JSON to write"),
                Port(
                    "markdown", "file", "promotion report to write (Markdown: figures, every check)"
                ),
            ),
        ),
    )
}


def run_stage(
    name: str,
    config: ReidConfig,
    inputs: Mapping[str, str | Path | Sequence[str | Path]],
    outputs: Mapping[str, str | Path | Sequence[str | Path]],
) -> dict[str, float]:
    """Check ports against the declaration, then run the stage.

    A `multiple` port takes a path or a sequence of paths (passed on as a tuple); the stage's
    multiple inputs must come in equal numbers, since they pair up in order.
    """
    spec = STAGES[name]
    expected_in = {p.name for p in spec.inputs}
    expected_out = {p.name for p in spec.outputs}
    if set(inputs) != expected_in or set(outputs) != expected_out:
        raise PortError(
            f"stage {name} takes inputs {sorted(expected_in)} and outputs {sorted(expected_out)}"
        )
    ins = {p.name: _port_paths(name, p, inputs[p.name]) for p in spec.inputs}
    outs = {p.name: _port_paths(name, p, outputs[p.name]) for p in spec.outputs}
    counts = {p.name: len(ins[p.name]) for p in spec.inputs if p.multiple}
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{n} --{port}" for port, n in counts.items())
        raise PortError(
            f"{name}: got {given}; these inputs pair up in order, so give one of each per item"
        )
    _fast_cpu_numerics()
    _show_library_logs()
    for port in spec.inputs:
        paths = ins[port.name] if port.multiple else (ins[port.name],)
        for path in paths:
            if port.kind == "model" and is_model_uri(str(path)):
                continue  # resolved by the stage, once MLflow points at the store
            ok = path.is_file() if port.kind == "file" else path.is_dir()
            if not ok:
                raise FileNotFoundError(f"{name}: input '{port.name}' is not a {port.kind}: {path}")
    return spec.load()(config, ins, outs)


def _port_paths(
    stage: str, port: Port, value: str | Path | Sequence[str | Path]
) -> Path | tuple[Path, ...]:
    """One Path for a single port; a non-empty tuple of Paths for a multiple one."""
    if isinstance(value, str | Path):
        return (Path(value),) if port.multiple else Path(value)
    if not port.multiple:
        raise PortError(f"{stage}: '{port.name}' takes one path, got {len(value)}")
    if not value:
        raise PortError(f"{stage}: '{port.name}' needs at least one path")
    return tuple(Path(v) for v in value)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a record comes (a test may have replaced it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_library_logs() -> None:
    """The library reports through `logging`; a stage shows its INFO records on stdout."""
    log = logging.getLogger("reid_core")
    if not any(isinstance(h, _StdoutHandler) for h in log.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def _fast_cpu_numerics() -> None:
    """Flush denormal floats to zero: tiny activations otherwise slow CPU kernels tenfold+."""
    import torch

    torch.set_flush_denormal(True)

"""Typed configuration: YAML files plus dotted overrides, validated in one place.

Every stage reads the same `ReidConfig`. Unknown keys and wrong types are reported all at
once, each error naming its dotted key, so a typo in params.yaml never passes silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Section):
    """Options of the synthetic dataset generator (`reid data synth`)."""

    num_ids: int = Field(120, ge=4)
    num_cams: int = Field(4, ge=2, le=9)
    images_per_id: int = Field(10, ge=4)
    height: int = Field(128, ge=32)
    width: int = Field(64, ge=16)
    seed: int = 0
    style: Literal["day", "dusk"] = "day"


class DataConfig(_Section):
    """Where a dataset lives, how to read it, and the input size models see."""

    format: Literal["market1501", "dukemtmc", "msmt17", "veri776", "csv"] = "market1501"
    domain: str = "source"
    height: int = Field(128, ge=16)
    width: int = Field(64, ge=16)
    min_image_side: int = Field(16, ge=1)
    max_image_side: int = Field(4096, ge=16)


class ModelConfig(_Section):
    """Which network to build (see `reid_core.modeling.create_model`)."""

    backbone: str = "resnet18"
    base_width: int = Field(64, ge=8)
    last_stride: Literal[1, 2] = 1
    ibn: bool = False
    pooling: Literal[
        "avg", "max", "gem", "gem_learnable", "attention", "clipped_avg", "avg_max"
    ] = "gem"
    gem_p: float = Field(3.0, gt=0)
    neck_feat: Literal["before", "after"] = "after"


class LossConfig(_Section):
    ce_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_weight: float = Field(1.0, ge=0)
    triplet_margin: float = Field(0.3, ge=0)


class SolverConfig(_Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    epochs: int = Field(12, ge=1)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_factor: float = Field(0.01, ge=0, le=1)
    ids_per_batch: int = Field(16, ge=2)
    images_per_id: int = Field(4, ge=1)
    seed: int = 0


class AugmentConfig(_Section):
    flip_p: float = Field(0.5, ge=0, le=1)
    pad: int = Field(6, ge=0)
    erasing_p: float = Field(0.5, ge=0, le=1)


class TrainConfig(_Section):
    """Supervised teacher training."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig()
    augment: AugmentConfig = AugmentConfig()
    log_every: int = Field(10, ge=1)


class DistillConfig(_Section):
    """A smaller student trained from the teacher's logits plus its own re-id loss."""

    model: ModelConfig = ModelConfig(base_width=32)
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig()
    augment: AugmentConfig = AugmentConfig()
    temperature: float = Field(4.0, gt=0)
    kd_weight: float = Field(1.0, ge=0)
    log_every: int = Field(10, ge=1)


class AdaptConfig(_Section):
    """One or more pseudo-label rounds on an unlabelled target domain."""

    rounds: int = Field(1, ge=1)
    eps: float = Field(0.6, gt=0, lt=1)  # on the Jaccard distance, which lies in [0, 1]
    min_samples: int = Field(4, ge=2)
    k1: int = Field(30, ge=2)
    k2: int = Field(6, ge=1)
    keep_outliers: bool = False
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig(epochs=4, lr=1e-4, warmup_epochs=0.0)
    augment: AugmentConfig = AugmentConfig()
    log_every: int = Field(10, ge=1)


class EvaluateConfig(_Section):
    metric: Literal["cosine", "euclidean"] = "cosine"
    batch_size: int = Field(128, ge=1)
    max_rank: int = Field(50, ge=1)
    fars: list[float] = [1e-4, 1e-3, 1e-2]  # verification: TAR at these false accept rates
    flip: bool = False  # average each image's features with its mirror image's
    query_expansion: Literal["none", "average", "alpha"] = "none"
    qe_k: int = Field(5, ge=1)
    qe_alpha: float = Field(3.0, ge=0)
    rerank: bool = False  # k-reciprocal re-ranking of the distances
    rerank_k1: int = Field(20, ge=1)
    rerank_k2: int = Field(6, ge=1)
    rerank_lambda: float = Field(0.3, ge=0, le=1)
    rerank_knn: Literal["torch", "faiss"] = "torch"  # nearest-neighbour search of re-ranking


class ExportConfig(_Section):
    opset: int = Field(18, ge=17)
    l2_normalize: bool = False
    parity_images: int = Field(64, ge=1)
    parity_batch_sizes: list[int] = [1, 7, 64]
    max_abs_diff: float = Field(1e-3, gt=0)
    min_cosine: float = Field(0.9999, gt=0, le=1)


class PromoteConfig(_Section):
    model_name: str = "reid-student"
    min_map_gain: float = Field(0.0, ge=0)
    triton_repository: Path = Path("serving/model_repository")
    max_batch_size: int = Field(64, ge=1)
    keep_versions: int = Field(3, ge=1)


class RuntimeConfig(_Section):
    """Where computation runs: `auto` takes the GPU when one is present."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")


class TrackingConfig(_Section):
    """Where runs go. Empty URI means the embedded SQLite store under `workspace`."""

    tracking_uri: str = ""
    experiment: str = "reidflow"
    workspace: Path = Path(".mlflow")


class ReidConfig(_Section):
    """The whole pipeline's configuration: what params.yaml holds."""

    synth: SynthConfig = SynthConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    adapt: AdaptConfig = AdaptConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    promote: PromoteConfig = PromoteConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _batch_fits(self) -> ReidConfig:
        for name in ("train", "distill", "adapt"):
            solver = getattr(self, name).solver
            if solver.ids_per_batch * solver.images_per_id < 2:
                raise ValueError(f"{name}.solver: a batch needs at least two images")
        return self

    def digest(self) -> str:
        """A short stable hash of the effective configuration (lineage tag)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. {'train.solver.lr': 0.00035}, for MLflow params."""
        return dict(_flatten(self.model_dump(mode="json")))


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every offending key."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split `key.path=value`; the value is parsed as YAML (so 3, 1e-4, true, [1,2] work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else ""


def _merge_yaml(tree: dict[str, Any], text: str, where: str) -> None:
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    for key, value in _flatten(loaded):
        _set_dotted(tree, key, value)


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> ReidConfig:
    """Merge YAML files (later wins) and `key=value` overrides into a validated config."""
    tree: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        _merge_yaml(tree, path.read_text(), str(path))
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return config_from_dict(tree)


def config_from_yaml(
    text: str, overrides: Iterable[str] = (), where: str = "config YAML"
) -> ReidConfig:
    """The same as `load_config` for YAML given as text (e.g. a pipeline parameter)."""
    tree: dict[str, Any] = {}
    _merge_yaml(tree, text, where)
    for override in overrides:
        _set_dotted(tree, *parse_override(override))
    return config_from_dict(tree)


def config_from_dict(tree: Mapping[str, Any]) -> ReidConfig:
    try:
        return ReidConfig.model_validate(tree)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            key = ".".join(str(p) for p in problem["loc"]) or "(top level)"
            if problem["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown key")
            else:
                lines.append(f"{key}: {problem['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def config_to_yaml(config: ReidConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

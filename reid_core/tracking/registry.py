"""The MLflow model registry: versions with lineage tags, and the champion alias."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from reid_core.config import ExportConfig
from reid_core.redact import redact
from reid_core.tracking.model_uri import is_model_uri
from reid_core.tracking.promotion import Candidate

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    from mlflow.models import Model, ModelSignature
    from torch import nn

    from reid_core.modeling import ReidModel

CHAMPION = "champion"
PREVIOUS = "previous"

# The pt2 archive's batch dimension is only exported as dynamic when the example has N > 1
# (torch.export specialises size-1 dimensions to constants).
_EXAMPLE_BATCH = 2
# How far the PyTorch flavour may drift from ONNX Runtime on the example: loose enough for an
# fp16 ONNX graph (the export gate's fp16 tolerance), tight enough to catch a wrong checkpoint
# or a mismatched `l2_normalize`.
_MAX_ABS_DIFF = ExportConfig.model_fields["fp16_max_abs_diff"].default
_MIN_COSINE = ExportConfig.model_fields["fp16_min_cosine"].default
_PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


def _save_onnx_and_pytorch(
    path: str,
    mlflow_model: Model,
    *,
    onnx_path: Path,
    serving: nn.Module,
    signature: ModelSignature,
    example: np.ndarray,
) -> None:
    """`Model.log`'s flavour hook: one MLflow model with the `onnx` flavour (whose
    `python_function` loader is ONNX Runtime) and a `pytorch` flavour saved as a torch.export
    "pt2" archive (weights as raw tensor bytes, no pickled modules), both under one MLmodel."""
    import mlflow
    import onnx
    from mlflow.models import Model

    from reid_core.export.onnx import INPUT_NAME

    mlflow.onnx.save_model(
        onnx.load(str(onnx_path)),
        path,
        mlflow_model=mlflow_model,
        signature=signature,
        input_example={INPUT_NAME: example},
        pip_requirements=["onnxruntime", "numpy"],
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        torch_dir = Path(tmp) / "pytorch"
        mlflow.pytorch.save_model(
            serving,
            str(torch_dir),
            serialization_format="pt2",
            signature=signature,
            input_example=example,
            pip_requirements=["torch"],
        )
        torch_flavour = Model.load(str(torch_dir)).flavors["pytorch"]
        shutil.copytree(torch_dir / torch_flavour["model_data"], Path(path, "data"))
    torch_flavour["model_data"] = "data"
    mlflow_model.add_flavor("pytorch", **torch_flavour)
    mlflow_model.model_size_bytes = sum(f.stat().st_size for f in Path(path).rglob("*"))
    mlflow_model.save(os.path.join(path, "MLmodel"))


class _Flavours:
    """The `flavor` that `Model.log` saves with (it calls `flavor.save_model`)."""

    save_model = staticmethod(_save_onnx_and_pytorch)


def _check_same_function(onnx_features: np.ndarray, torch_features: np.ndarray) -> None:
    """Refuse to register a PyTorch flavour that does not compute what the ONNX file does."""
    from reid_core.export.onnx import compare

    diff, cosine = compare(torch_features, onnx_features)
    if diff > _MAX_ABS_DIFF or cosine < _MIN_COSINE:
        raise ValueError(
            f"the checkpoint's serving model differs from the ONNX model: max abs diff "
            f"{diff:.3g} (allowed {_MAX_ABS_DIFF}), min cosine {cosine:.6f} (required "
            f"{_MIN_COSINE}); wrong checkpoint or l2_normalize?"
        )


def register_model(
    onnx_path: Path,
    model: ReidModel,
    model_name: str,
    tags: dict[str, str],
    *,
    l2_normalize: bool,
) -> int:
    """Log one MLflow model (`model` in the active run) with the `onnx`, `pytorch` and
    `python_function` flavours, register it, tag the version; return its number.

    `python_function` is ONNX Runtime's, so `mlflow.pyfunc.load_model(...).predict({"images":
    x})` embeds exactly as the served graph does; `pytorch` is the fp32 `ServingModel` of
    `model`, the checkpoint the graph was exported from (same interface, normalisation
    inside), exported with torch.export, so that
    `load_pytorch_model` reads it back without unpickling objects. Both carry the signature
    (`images` N×3×H×W float32 → `features` N×D) and an input example.
    """
    import mlflow
    import numpy as np
    import onnxruntime as ort
    import torch
    from mlflow.models import Model, infer_signature

    from reid_core.export.onnx import INPUT_NAME, OUTPUT_NAME, ServingModel, onnx_interface

    height, width, _ = onnx_interface(onnx_path)
    shape = (_EXAMPLE_BATCH, 3, height, width)
    example = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (features,) = session.run([OUTPUT_NAME], {INPUT_NAME: example})
    serving = ServingModel(model, l2_normalize).eval()
    with torch.inference_mode():
        _check_same_function(features, serving(torch.from_numpy(example)).numpy())
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=_Flavours,
        flavor_name="onnx",
        registered_model_name=model_name,
        onnx_path=onnx_path,
        serving=serving,
        signature=infer_signature({INPUT_NAME: example}, {OUTPUT_NAME: features}),
        example=example,
    )
    version = int(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, str(value))
    return version


@contextmanager
def _pickles_refused() -> Iterator[None]:
    """Make MLflow refuse pickled payloads for the duration (its default allows them)."""
    previous = os.environ.get(_PICKLE_ENV)
    os.environ[_PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_PICKLE_ENV]
        else:
            os.environ[_PICKLE_ENV] = previous


def load_pytorch_model(model_uri: str) -> nn.Module:
    """The `pytorch` flavour of `model_uri` as a module (N×3×H×W images → N×D features).

    `torch.export.load` unpickles (`weights_only=False`) any weight or constant record that an
    archive marks as pickled, and sample inputs that `weights_only` refuses; with pickles
    refused, MLflow first checks that every record is raw tensor bytes, JSON/text or accepted
    by torch's `weights_only` unpickler, and refuses pickle-format (`model.pth`) models.
    Still only for archives this project wrote: loading evaluates the graph's symbolic shape
    strings with sympy (`eval`), so a crafted archive runs code without any pickle. For a
    model of unknown origin use `load_checkpoint(checkpoint_folder(uri))` (safetensors).
    """
    import mlflow

    with _pickles_refused():
        return mlflow.pytorch.load_model(model_uri)


@contextmanager
def registered_onnx(model_name: str, version: int | str) -> Iterator[Path]:
    """The ONNX file of a registered version (the one its onnx flavour saved, as its MLmodel
    records it), downloaded into a temporary folder that lasts as long as the block."""
    import mlflow
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version}", dst_path=tmp
            )
        )
        yield folder / Model.load(folder).flavors["onnx"]["data"]


def candidate(model_name: str, version: int) -> Candidate:
    """Read back the figures the policy compares, from the version's tags."""
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(model_name, str(version))
    t = mv.tags
    return Candidate(
        version=version,
        mAP=float(t["reid.mAP"]),
        rank1=float(t["reid.rank1"]),
        eval_set_hash=t["reid.eval_set_hash"],
        parity_passed=t.get("reid.parity_passed") == "true",
        latency_ms=float(t["reid.latency_ms"]) if t.get("reid.latency_ms") else None,
    )


def set_champion_alias(eval_set_hash: str) -> str:
    """The alias of the champion on one evaluation set (what promotion compares within)."""
    return f"{CHAMPION}-{eval_set_hash[:12]}"


def champion(model_name: str, eval_set_hash: str = "") -> Candidate | None:
    """The served champion; with `eval_set_hash`, the champion on that evaluation set instead
    (its own alias, or the served champion when that one was judged on the set), or None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    aliases = [set_champion_alias(eval_set_hash)] if eval_set_hash else []
    for alias in [*aliases, CHAMPION]:
        try:
            mv = client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            continue
        found = candidate(model_name, int(mv.version))
        if not eval_set_hash or found.eval_set_hash == eval_set_hash:
            return found
    return None


PREVIOUS_TAG = "reid.previous_champion"
PROMOTION_TAG = "reid.promotion"


@contextmanager
def aliases_restored_on_failure(model_name: str) -> Iterator[None]:
    """Put `model_name`'s aliases back as they were when the block fails (as far as the
    tracking server, which may be what failed, still answers)."""
    import mlflow

    client = mlflow.MlflowClient()
    before = dict(client.get_registered_model(model_name).aliases)
    try:
        yield
    except BaseException:
        try:
            now = dict(client.get_registered_model(model_name).aliases)
            for alias in sorted(set(now) - set(before)):
                client.delete_registered_model_alias(model_name, alias)
            for alias, version in sorted(before.items()):
                if now.get(alias) != version:
                    client.set_registered_model_alias(model_name, alias, version)
        except Exception as err:  # noqa: BLE001 - the first failure is the one to report
            log.warning("%s: could not restore the aliases %s: %s", model_name, before, err)
        raise


def record_failed_promotion(model_name: str, version: int, error: BaseException) -> None:
    """Tag a registered version whose promotion failed, so no version is left without a
    decision; if the tracking server is gone too, say which version is undecided."""
    import mlflow

    why = redact(str(error)).splitlines()[0][:300] if str(error) else type(error).__name__
    try:
        mlflow.MlflowClient().set_model_version_tag(
            model_name, str(version), PROMOTION_TAG, f"failed: {why}"
        )
    except Exception:  # noqa: BLE001
        log.warning(
            "%s v%s was registered but its promotion failed and could not be recorded; "
            "it is not champion and not served",
            model_name,
            version,
        )


def set_champion(model_name: str, version: int, old: Candidate | None) -> None:
    """Make `version` the served champion and the champion on its evaluation set; the replaced
    served one keeps the `previous` alias.

    The new champion's `reid.previous_champion` tag remembers the one it replaced, so
    rollbacks can walk back more than one step.
    """
    import mlflow

    client = mlflow.MlflowClient()
    if old is not None:
        client.set_model_version_tag(model_name, str(version), PREVIOUS_TAG, str(old.version))
        client.set_registered_model_alias(model_name, PREVIOUS, str(old.version))
    new = candidate(model_name, version)
    client.set_registered_model_alias(
        model_name, set_champion_alias(new.eval_set_hash), str(version)
    )
    client.set_registered_model_alias(model_name, CHAMPION, str(version))


def checkpoint_folder(source: str | Path) -> Path:
    """The local checkpoint folder behind `source`, downloading it when it is an MLflow URI.

    `models:/<name>@<alias>` and `models:/<name>/<version>` resolve to the checkpoint that the
    version's training run logged (its `reid.train_run_id` tag, set by `reid promote`);
    `runs:/<run id>/<path>` names a logged checkpoint directly; anything else is a path.
    MLflow must already point at the store (`setup_mlflow`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    source = str(source)
    if not is_model_uri(source):
        return Path(source)
    if ".." in source.split("?")[0].split("/"):
        raise ValueError(f"{source}: '..' is not allowed in a model URI")
    try:
        if source.startswith("runs:/"):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
        name, sep, alias = source.removeprefix("models:/").partition("@")
        client = mlflow.MlflowClient()
        if sep:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        run_id = version.tags.get("reid.train_run_id", "")
        if not run_id:
            raise ValueError(
                f"{source}: version {version.version} has no reid.train_run_id tag, so its "
                "checkpoint is unknown (register models with `reid promote`)"
            )
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint"))
    except MlflowException as err:
        raise ValueError(f"cannot resolve {source} in the MLflow registry: {err.message}") from err

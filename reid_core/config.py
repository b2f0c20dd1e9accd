"""Typed configuration: YAML files plus dotted overrides, validated in one place.

Every stage reads the same `ReidConfig`. Unknown keys and wrong types are reported all at
once, each error naming its dotted key, so a typo in params.yaml never passes silently.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reid_core.options import (  # the library's options, of which the pipeline's config is built
    AdaptConfig,
    AugmentConfig,
    DistillConfig,
    EvaluateConfig,
    LossConfig,
    ModelConfig,
    Options,
    SolverConfig,
    validation_problems,
)
from reid_core.redact import redact_values, split_credentials


class SynthConfig(Options):
    """Options of the synthetic dataset generator (`reid data synth`)."""

    num_ids: int = Field(120, ge=4, le=100_000)
    num_cams: int = Field(4, ge=2, le=9)
    images_per_id: int = Field(10, ge=4, le=1000)
    height: int = Field(128, ge=32, le=1024)
    width: int = Field(64, ge=16, le=1024)
    seed: int = 0
    style: Literal["day", "dusk"] = "day"
    partial: Literal["none", "crop", "occlude"] = "none"  # partial queries (Partial-REID-like)


class VehicleSynthConfig(Options):
    """Options of the synthetic vehicle dataset generator (`reid data synth-vehicles`)."""

    layout: Literal["vehicleid", "veriwild"] = "vehicleid"
    num_ids: int = Field(60, ge=5, le=99_999)
    num_cams: int = Field(4, ge=2, le=174)
    images_per_id: int = Field(6, ge=3, le=1000)
    size: int = Field(128, ge=32, le=1024)
    seed: int = 0


class DatasetsConfig(Options):
    """The pipeline's datasets by reference (`reid_core.sources.references`): `synth:STYLE
    [?seed=N]`, `dvc:REPO?path=PATH[&rev=REV]`, `s3://bucket/prefix` or a local folder.

    `source` trains the teacher and the student; `target` is the unlabelled domain adaptation
    runs on, or empty for none (the Kubeflow pipeline then skips adaptation). Values are kept in
    their canonical spelling.
    """

    source: str = "synth:day?seed=0"
    target: str = "synth:dusk?seed=1"

    @field_validator("source", "target")
    @classmethod
    def _is_reference(cls, value: str, info: ValidationInfo) -> str:
        from reid_core.sources.references import parse_reference

        if info.field_name == "target" and not value.strip():
            return ""
        return str(parse_reference(value))

    def reference(self, name: str):
        """The parsed reference of dataset `name` (source or target); None for no target."""
        from reid_core.sources.references import parse_reference

        if name not in ("source", "target"):
            raise ValueError(f"no dataset called {name!r}: datasets are 'source' and 'target'")
        text = getattr(self, name)
        return parse_reference(text) if text else None


class DataConfig(Options):
    """Where a dataset lives, how to read it, and the input size models see."""

    format: str = "market1501"  # a name in reid_core.data.readers.READERS
    # which of the format's test sets (VehicleID 800/1600/2400, VERI-Wild small/medium/large);
    # empty: the format's default (its first; formats with one test set take none)
    test_set: str = ""
    domain: str = "source"
    # model input size: bounded so a typo cannot ask for absurd memory
    height: int = Field(128, ge=16, le=1024)
    width: int = Field(64, ge=16, le=1024)
    min_image_side: int = Field(16, ge=1)
    max_image_side: int = Field(4096, ge=16, le=16384)

    @field_validator("format")
    @classmethod
    def _registered_format(cls, value: str) -> str:
        from reid_core.data.readers import READERS

        READERS.lookup(value)
        return value

    @field_validator("test_set", mode="before")
    @classmethod
    def _size_as_name(cls, value: object) -> object:
        # `--set data.test_set=800` arrives as a YAML integer: VehicleID names sets by size
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _known_test_set(self) -> DataConfig:
        from reid_core.data.readers import resolve_test_set

        resolve_test_set(self.format, self.test_set)
        return self


class TrainConfig(Options):
    """Supervised teacher training."""

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig()
    augment: AugmentConfig = AugmentConfig()
    log_every: int = Field(10, ge=1)


class ExportConfig(Options):
    """ONNX export and its parity gate (ONNX Runtime, and TensorRT on a GPU, vs PyTorch)."""

    opset: int = Field(18, ge=17)
    l2_normalize: bool = False
    # fp16 weights and arithmetic inside the graph; the interface stays float32 in and out
    fp16: bool = False
    parity_images: int = Field(64, ge=1, le=4096)
    # the gate compares each of these batch sizes (distinct; at least one)
    parity_batch_sizes: list[Annotated[int, Field(ge=1, le=1024)]] = Field([1, 7, 64], min_length=1)
    # the gate's tolerances: wide enough for any real export, never so wide it lets all pass
    max_abs_diff: float = Field(1e-3, gt=0, le=1)
    min_cosine: float = Field(0.9999, ge=0.9, le=1)
    # tolerances for reduced-precision graphs (fp16 ONNX, TensorRT fp16 engines)
    fp16_max_abs_diff: float = Field(5e-2, gt=0, le=1)
    fp16_min_cosine: float = Field(0.999, ge=0.9, le=1)
    # build a TensorRT fp16 engine when a GPU is present (skipped, with a message, on CPU)
    tensorrt: bool = True

    @field_validator("parity_batch_sizes")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"batch sizes repeat: {value}")
        return value


MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""A registered model's name, also its Triton folder and config.pbtxt `name`: letters, digits,
'-', '_' and '.' (nothing that could end a quoted string or leave the folder)."""


class PromoteConfig(Options):
    """The promotion policy (`reid_core.tracking.promotion`); metrics are fractions."""

    model_name: str = Field("reid-student", pattern=MODEL_NAME_PATTERN)
    # mAP must beat the champion's by more than this (by anything at 0)
    min_map_gain: float = Field(0.0, ge=0)
    # rank-1 may fall below the champion's by at most this
    max_rank1_drop: float = Field(0.01, ge=0)
    # ONNX Runtime CPU latency at batch 1 measured by export, in ms (0: no budget)
    max_latency_ms: float = Field(0.0, ge=0)

    def policy(self):
        from reid_core.tracking.promotion import Policy

        return Policy(self.min_map_gain, self.max_rank1_drop, self.max_latency_ms)


class TritonConfig(Options):
    """The Triton model repository that promotion publishes to, and the local server.

    `backend: onnxruntime` writes the production config for NVIDIA's Triton image;
    `backend: tensorrt` serves the export's TensorRT engine there instead (GPU, built on the
    GPU model it will run on); `backend: python` writes the variant the bundled CPU
    tritonserver can load (its python backend runs the same model.onnx with ONNX Runtime).
    """

    # a folder, or an S3 prefix in Triton's spelling: s3://bucket/prefix (AWS) or
    # s3://[http://|https://]host:port/bucket/prefix; credentials from the environment
    repository: str = "serving/model_repository"
    backend: Literal["onnxruntime", "tensorrt", "python"] = "python"
    max_batch_size: int = Field(64, ge=1)
    preferred_batch_sizes: list[int] = [8, 16, 32, 64]
    max_queue_delay_us: int = Field(2000, ge=0)
    dynamic_batching: bool = True
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    instance_count: int = Field(1, ge=1)
    # versions Triton serves at once (config.pbtxt names them); a new one replaces the oldest.
    # keep_versions stay in the repository (rollback targets); one more while it is replaced
    serve_versions: int = Field(1, ge=1)
    keep_versions: int = Field(3, ge=1)
    # the local server (`reid serve`)
    server_dir: Path = Path(".reidflow/tritonserver")
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    metrics_port: int = Field(8002, ge=1, le=65535)
    poll_seconds: int = Field(2, ge=1)

    @field_validator("repository")
    @classmethod
    def _a_repository(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name a folder or an s3:// location")
        if value.startswith("s3://"):
            from reid_core.s3_location import S3Location

            S3Location.parse(value)
        return value

    @model_validator(mode="after")
    def _preferred_fit(self) -> TritonConfig:
        too_big = [s for s in self.preferred_batch_sizes if s > self.max_batch_size or s < 1]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} outside 1..max_batch_size ({self.max_batch_size})"
            )
        if self.keep_versions < self.serve_versions:
            raise ValueError(
                f"keep_versions ({self.keep_versions}) is below serve_versions "
                f"({self.serve_versions}): served versions stay in the repository"
            )
        return self


class IndexConfig(Options):
    """Gallery search index (`reid index build`): exact or approximate faiss search."""

    kind: Literal["flat", "ivfpq", "hnsw"] = "flat"
    # IVF-PQ: lists (0: about 4·sqrt(N)), sub-quantisers (0: D/8, a divisor of D), bits each
    nlist: int = Field(0, ge=0)
    pq_m: int = Field(0, ge=0)
    pq_bits: int = Field(8, ge=4, le=12)
    nprobe: int = Field(32, ge=1)
    # IVF-PQ re-ranking: the k·refine_factor best by PQ code are re-scored with 8-bit scalar-
    # quantised vectors (sq8: D bytes an item more, ¼ of float) or the float vectors (flat:
    # 4·D bytes). PQ codes alone lose most of the exact top-k to quantisation error: at 1M
    # items recall@10 is 0.35 plain, 0.72 / 0.89 / 0.98 re-ranked ×4 / ×8 / ×16, for 13 %
    # fewer queries/s at ×16 (benchmarks/faiss_gallery.py). On a GPU, k·factor ≤ 2048.
    refine: Literal["none", "sq8", "flat"] = "sq8"
    refine_factor: int = Field(16, ge=1)
    # HNSW: links per node, build and search beam widths
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(80, ge=8)
    ef_search: int = Field(128, ge=8)
    # auto: a GPU when faiss has one (flat and IVF-PQ; HNSW is CPU only in faiss)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    top_k: int = Field(10, ge=1)


class GalleryConfig(Options):
    """A dataset the search page can search: its folder and the manifest `reid preprocess`
    wrote for it (the gallery split is indexed, the query split offered as queries)."""

    dataset: Path
    manifest: Path


def _demo_galleries() -> dict[str, GalleryConfig]:
    """The pipeline's two datasets, where dvc.yaml puts them."""
    return {
        domain: GalleryConfig(
            dataset=Path(f"data/datasets/{domain}"),
            manifest=Path(f"work/manifests/{domain}.parquet"),
        )
        for domain in ("source", "target")
    }


class UiConfig(Options):
    """The search page (`reid ui`): where it listens, what it searches, what it accepts.

    Actions that change the registry (promote, rollback) appear only when the operator sets
    the token in the environment variable REID_UI_TOKEN; it is never read from a file.
    """

    # loopback unless the operator opens it up (0.0.0.0: every interface)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    # the page's own files: indexes of each gallery per model version, downloaded models
    workdir: Path = Path("work/ui")
    galleries: dict[str, GalleryConfig] = Field(default_factory=_demo_galleries, min_length=1)
    top_k: int = Field(20, ge=1, le=200)
    max_upload_mb: float = Field(10.0, gt=0, le=100)

    @field_validator("galleries")
    @classmethod
    def _names_fit_urls(cls, galleries: dict[str, GalleryConfig]) -> dict[str, GalleryConfig]:
        bad = [name for name in galleries if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)]
        if bad:
            raise ValueError(
                f"gallery names may hold letters, digits, '_', '.', '-' only: {', '.join(bad)}"
            )
        return galleries


class RuntimeConfig(Options):
    """Where computation runs: `auto` takes the GPU when one is present."""

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # resumable training state of unfinished runs (removed when a run completes)
    state_dir: Path = Path(".reidflow/state")
    # data-parallel training processes on this machine (one per GPU): the train stage starts
    # them itself (torchrun); a training-operator pod's PET_NPROC_PER_NODE takes precedence
    procs_per_node: int = Field(1, ge=1, le=64)


class TrackingConfig(Options):
    """Where runs go. Empty URI means the embedded SQLite store under `workspace`.

    A user and password written into the URI (`https://user:password@host`) are taken out as
    it is read: the URI kept holds no secret, and `credentials()` gives them to MLflow.
    """

    tracking_uri: str = ""
    _username: str = PrivateAttr("")
    _password: str = PrivateAttr("")
    experiment: str = "reidflow"
    workspace: Path = Path(".mlflow")
    # a tracking server that does not answer is tried this many times, waiting
    # connect_backoff_s, then twice as long each time, before the stage fails
    connect_attempts: int = Field(6, ge=1)
    connect_backoff_s: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _credentials_out_of_the_uri(self) -> TrackingConfig:
        clean, user, password = split_credentials(self.tracking_uri)
        if user or password:
            self.__dict__["tracking_uri"] = clean  # not validated again: no recursion
            self._username, self._password = user, password
        return self

    def credentials(self) -> tuple[str, str]:
        """The (user, password) the configured URI carried; empty when it carried none."""
        return self._username, self._password


def _whole(pattern: str, *, empty: bool = False) -> str:
    """`pattern` matching a whole value (or, with `empty`, nothing at all)."""
    return f"^(?:{pattern}){'?' if empty else ''}$"


_CPU = _whole(r"\d+(?:\.\d+)?m?")  # Kubernetes CPU quantities: 2, 0.5, 500m
_MEMORY = _whole(r"\d+(?:\.\d+)?(?:[KMGTPE]i?)?")  # memory quantities: 512Mi, 4Gi, 1G
_LABEL = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS_NAME = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
KUBEFLOW_STAGES = (
    "fetch",
    "preprocess",
    "train",
    "distill",
    "adapt",
    "evaluate",
    "export",
    "promote",
)
ACCELERATED_STAGES = ("train", "distill", "adapt", "evaluate", "export")
"""The stages that compute with the model, which a GPU pipeline runs on accelerators."""
TRAINING_STAGES = ("train", "distill", "adapt")
"""The stages that keep resumable training state, which a retry resumes from."""
STATE_MOUNT = "/var/lib/reidflow/state"
"""Where a cluster pod mounts `kubeflow.state_volume`."""
DATA_PARALLEL_STAGES = ("train",)
"""The stages that train data-parallel over several processes (GPUs, pods)."""


class TaskResources(Options):
    """CPU and memory one stage's pod requests and is limited to (Kubernetes quantities)."""

    cpu_request: str = Field("1", pattern=_CPU)
    cpu_limit: str = Field("2", pattern=_CPU)
    memory_request: str = Field("2Gi", pattern=_MEMORY)
    memory_limit: str = Field("4Gi", pattern=_MEMORY)

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", mode="before")
    @classmethod
    def _number_as_quantity(cls, value: Any) -> Any:
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    @model_validator(mode="after")
    def _request_within_limit(self) -> TaskResources:
        for kind, parse in (("cpu", _cpu_cores), ("memory", _memory_bytes)):
            request, limit = getattr(self, f"{kind}_request"), getattr(self, f"{kind}_limit")
            if parse(request) > parse(limit):
                raise ValueError(f"{kind}_request {request} is more than {kind}_limit {limit}")
        return self


def _cpu_cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _memory_bytes(quantity: str) -> float:
    number = re.match(r"^[\d.]+", quantity).group()
    suffix = quantity[len(number) :]
    powers = "KMGTPE"
    if not suffix:
        return float(number)
    base = 1024 if suffix.endswith("i") else 1000
    return float(number) * base ** (powers.index(suffix[0]) + 1)


def _default_resources() -> dict[str, TaskResources]:
    light = TaskResources()
    evaluating = TaskResources(
        cpu_request="2", cpu_limit="4", memory_request="4Gi", memory_limit="8Gi"
    )
    training = TaskResources(
        cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="32Gi"
    )
    sizes = {"train": training, "distill": training, "adapt": training}
    sizes |= {"preprocess": evaluating, "evaluate": evaluating, "export": evaluating}
    return {stage: sizes.get(stage, light) for stage in KUBEFLOW_STAGES}


class Toleration(Options):
    """A Kubernetes toleration, so accelerated pods may run on tainted GPU nodes."""

    key: str = Field("", pattern=_whole(_LABEL, empty=True))
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class AcceleratorConfig(Options):
    """GPUs for the ACCELERATED_STAGES of the compiled pipeline; empty `type` compiles for CPU.

    `image` is those tasks' image (empty: the CPU image's name with `-cuda`, as `make image
    VARIANT=cuda` tags it); `node_selector` and `tolerations` place their pods.
    """

    type: str = Field("", pattern=_whole(_LABEL, empty=True))  # e.g. nvidia.com/gpu
    count: int = Field(1, ge=1, le=16)
    image: str = ""
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(_LABEL, key):
                raise ValueError(f"{key!r} is not a Kubernetes label key")
        return value


class TrainingJobConfig(Options):
    """Train on Kubeflow's training operator instead of in the pipeline's own pod.

    With `nodes` ≥ 1 the pipeline's train task creates a PyTorchJob of that many pods, each
    running `reid train` on `kubeflow.accelerator.count` GPUs (one process per GPU), and waits
    for it; the pods share the dataset, the training state and the checkpoint through the
    `kubeflow.state_volume` claim, which must then be ReadWriteMany. `namespace` empty: the
    pipeline run's own. 0 trains in the pipeline's pod.
    """

    nodes: int = Field(0, ge=0, le=1024)
    namespace: str = Field("", pattern=_whole(_DNS_NAME, empty=True))
    timeout_s: int = Field(7 * 24 * 3600, ge=60)  # the whole job, queueing included
    poll_s: int = Field(30, ge=1)


class KubeflowConfig(Options):
    """How the compiled pipeline's pods are sized, placed and given credentials on a cluster.

    `resources` by stage (stages not named keep their defaults: training stages larger than
    evaluation and export, the rest small). Training tasks are retried `retries` times, the
    first after `retry_backoff_s`; a retry resumes from the task's saved training state, which
    lives on the PersistentVolumeClaim `state_volume` when one is named (else in the task's
    container, which a retried pod does not see). `credentials_secret` names a Kubernetes Secret in
    the run's namespace (empty: none); each of its keys in `credentials_keys` that it holds
    becomes the environment variable of that name in every task, so no secret value enters the
    pipeline. A missing Secret or key is no error: a run that needs none starts anyway.
    """

    resources: dict[str, TaskResources] = Field(default_factory=_default_resources)
    accelerator: AcceleratorConfig = AcceleratorConfig()
    retries: int = Field(2, ge=0, le=10)  # training tasks, with doubling backoff
    retry_backoff_s: int = Field(30, ge=0)
    state_volume: str = Field("", pattern=_whole(_DNS_NAME, empty=True))  # a PVC
    training_job: TrainingJobConfig = TrainingJobConfig()
    credentials_secret: str = Field("reidflow-s3", pattern=_whole(_DNS_NAME, empty=True))
    credentials_keys: list[str] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
    ]

    @field_validator("resources", mode="before")
    @classmethod
    def _per_stage(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(KUBEFLOW_STAGES))
        if unknown:
            raise ValueError(f"no stage called {', '.join(map(repr, unknown))}: {KUBEFLOW_STAGES}")
        defaults = _default_resources()
        merged = {}
        for stage in KUBEFLOW_STAGES:
            given = value.get(stage) or {}
            if isinstance(given, TaskResources):
                given = given.model_dump()
            merged[stage] = {**defaults[stage].model_dump(), **given}
        return merged

    @field_validator("credentials_keys")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(_ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @model_validator(mode="after")
    def _job_shares_a_volume(self) -> KubeflowConfig:
        if self.training_job.nodes and not self.state_volume:
            raise ValueError(
                "training_job.nodes needs state_volume: the job's pods read the dataset and "
                "write the checkpoint on that (ReadWriteMany) claim"
            )
        return self

    @property
    def gpus_per_task(self) -> int:
        """GPUs each accelerated pod gets (0 for a CPU pipeline)."""
        return self.accelerator.count if self.accelerator.type else 0


class ReidConfig(Options):
    """The whole pipeline's configuration: what params.yaml holds."""

    synth: SynthConfig = SynthConfig()
    synth_vehicles: VehicleSynthConfig = VehicleSynthConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    adapt: AdaptConfig = AdaptConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    promote: PromoteConfig = PromoteConfig()
    triton: TritonConfig = TritonConfig()
    index: IndexConfig = IndexConfig()
    ui: UiConfig = UiConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    kubeflow: KubeflowConfig = KubeflowConfig()

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

    def flat(self, *, redacted: bool = True) -> dict[str, Any]:
        """Dotted-key view, e.g. {'train.solver.lr': 0.00035}, for MLflow params; secrets in
        URLs (a token in a weights URL, say) are redacted unless `redacted=False`."""
        tree = self.model_dump(mode="json")
        return dict(_flatten(redact_values(tree) if redacted else tree))


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


BASE_KEY = "_base_"


def _merge_yaml(
    tree: dict[str, Any], text: str, where: str, folder: Path, seen: tuple[Path, ...] = ()
) -> None:
    """Merge YAML `text` into `tree`; files named by its `_base_` key (a path or a list,
    relative to `folder`) are merged first, so a preset's keys can be overridden."""
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        # where and what, never the text itself: a file named by mistake may hold secrets
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "unreadable"
        raise ConfigError(f"{where} is not a YAML config file: {problem}{at}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: not a config file (its top level must be a mapping)")
    bases = loaded.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{where}: {BASE_KEY} must be a file path or a list of them")
    for base in bases:
        path = (folder / base).resolve()
        if path in seen:
            raise ConfigError(f"{where}: {BASE_KEY} {base} includes itself")
        if not path.is_file():
            raise ConfigError(f"{where}: {BASE_KEY} file not found: {path}")
        _merge_yaml(tree, _config_text(path), str(path), path.parent, (*seen, path))
    _merge_tree(tree, loaded)


def _config_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a YAML config file: not UTF-8 text") from None


def _merge_tree(tree: dict[str, Any], loaded: Mapping[str, Any]) -> None:
    """Merge `loaded` into `tree` section by section (later values win). Keys are taken as
    written: a map such as a node selector may have dots in its keys."""
    for key, value in loaded.items():
        if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            _merge_tree(tree[key], value)
        else:
            tree[key] = dict(value) if isinstance(value, Mapping) else value


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> ReidConfig:
    """Merge YAML files (later wins) and `key=value` overrides into a validated config.

    A file may start from presets with `_base_: path` (see configs/recipes)."""
    tree: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        _merge_yaml(tree, _config_text(path), str(path), path.resolve().parent, (path.resolve(),))
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return config_from_dict(tree)


def config_from_yaml(
    text: str, overrides: Iterable[str] = (), where: str = "config YAML"
) -> ReidConfig:
    """The same as `load_config` for YAML given as text (e.g. a pipeline parameter); its
    `_base_` paths are relative to the working directory."""
    tree: dict[str, Any] = {}
    _merge_yaml(tree, text, where, Path.cwd())
    for override in overrides:
        _set_dotted(tree, *parse_override(override))
    return config_from_dict(tree)


def config_from_dict(tree: Mapping[str, Any]) -> ReidConfig:
    try:
        return ReidConfig.model_validate(tree)
    except ValidationError as err:
        lines = validation_problems(err)
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def with_overrides(config: ReidConfig, overrides: Iterable[str]) -> ReidConfig:
    """A copy of `config` with `key.path=value` overrides applied and validated."""
    tree = config.model_dump(mode="json")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return config_from_dict(tree)


def config_to_yaml(config: ReidConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

"""`reid train` on several pods as a PyTorchJob of Kubeflow's training operator (kubeflow.org/v1).

The operator starts one Master pod and `nodes - 1` Worker pods and gives each container the
rendezvous environment (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and PET_NNODES,
PET_NODE_RANK, PET_NPROC_PER_NODE). `reid train` reads it: with one process per pod it joins the
job directly, with several it starts them through torchrun, which reads the PET_* variables.
Every pod mounts the same claim, where the dataset, the config, the resumable training state and
the checkpoint (written by rank 0) live under one folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from reid_core.cluster.openapi import SchemaError, to_model
from reid_core.config import STATE_MOUNT, KubeflowConfig

logger = logging.getLogger(__name__)

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the training container by this name
PORT_NAME = "pytorchjob-port"  # ... and the master's rendezvous port by this one
PORT = 23456
REPLICA_TYPES = ("Master", "Worker")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
CLEAN_POD_POLICIES = ("All", "Running", "None")
RUN_AS = 10001  # the project image's user
FINISHED_TTL_S = 3 * 24 * 3600  # time to read a finished job's logs


@dataclass(frozen=True)
class JobFolder:
    """The files of one job on the shared claim."""

    root: PurePosixPath

    @property
    def config(self) -> PurePosixPath:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> PurePosixPath:
        return self.root / "dataset"

    @property
    def manifest(self) -> PurePosixPath:
        return self.root / "manifest.parquet"

    @property
    def state(self) -> PurePosixPath:
        return self.root / "state"

    @property
    def checkpoint(self) -> PurePosixPath:
        return self.root / "checkpoint"

    @property
    def metrics(self) -> PurePosixPath:
        return self.root / "metrics.json"

    def train_args(self) -> list[str]:
        """`reid train`'s arguments on these files."""
        return [
            "train",
            f"--config={self.config}",
            f"--dataset={self.dataset}",
            f"--manifest={self.manifest}",
            f"--checkpoint={self.checkpoint}",
            f"--metrics={self.metrics}",
        ]


def build_pytorchjob(
    name: str,
    namespace: str,
    image: str,
    folder: JobFolder,
    settings: KubeflowConfig,
    env: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The PyTorchJob training on `settings.training_job.nodes` pods of `image`, each with
    `settings.accelerator.count` GPUs (one process each) when an accelerator type is set, the
    train stage's resources, the claim `settings.state_volume`, the `env` given and the
    credentials Secret's keys; checked against the operator's models."""
    nodes = settings.training_job.nodes
    if nodes < 1:
        raise ValueError("kubeflow.training_job.nodes must be at least 1 for a training job")
    procs = max(settings.gpus_per_task, 1)
    labels = {
        "app.kubernetes.io/part-of": "reidflow",
        "app.kubernetes.io/component": "training",
        **(labels or {}),
    }
    replicas = {"Master": 1, "Worker": nodes - 1}
    job = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(procs),
            "runPolicy": {
                "backoffLimit": settings.retries,
                "cleanPodPolicy": "None",  # keep finished pods' logs until the TTL
                "ttlSecondsAfterFinished": FINISHED_TTL_S,
            },
            "pytorchReplicaSpecs": {
                kind: {
                    "replicas": count,
                    # a failed pod restarts in place and resumes from the state on the claim
                    "restartPolicy": "OnFailure",
                    "template": _pod_template(image, folder, settings, env, labels),
                }
                for kind, count in replicas.items()
                if count
            },
        },
    }
    validate_pytorchjob(job)
    return job


def _pod_template(
    image: str,
    folder: JobFolder,
    settings: KubeflowConfig,
    env: Mapping[str, str],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    resources = settings.resources["train"]
    limits = {"cpu": resources.cpu_limit, "memory": resources.memory_limit}
    accelerator = settings.accelerator
    if accelerator.type:
        limits[accelerator.type] = str(accelerator.count)
    variables = [{"name": key, "value": value} for key, value in sorted(env.items())]
    if settings.credentials_secret:
        variables += [
            {
                "name": key,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": settings.credentials_secret,
                        "key": key,
                        "optional": True,
                    }
                },
            }
            for key in settings.credentials_keys
        ]
    spec: dict[str, Any] = {
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": image,
                "command": ["reid"],
                "args": folder.train_args(),
                "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
                "env": variables,
                "resources": {
                    "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
                    "limits": limits,
                },
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "state", "mountPath": STATE_MOUNT},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "state", "persistentVolumeClaim": {"claimName": settings.state_volume}},
            # data-loader workers and NCCL exchange tensors through shared memory
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ],
    }
    if accelerator.type:
        if accelerator.node_selector:
            spec["nodeSelector"] = dict(sorted(accelerator.node_selector.items()))
        if accelerator.tolerations:
            spec["tolerations"] = [
                {k: v for k, v in t.model_dump().items() if v} for t in accelerator.tolerations
            ]
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def validate_pytorchjob(job: Mapping[str, Any]) -> Any:
    """`job` as the operator SDK's model, strict on unknown fields and types, with the
    operator's own rules the SDK leaves to the server (kind, replica types, policies, the
    training container and its port); raises SchemaError naming the field."""
    model = to_model(dict(job), "KubeflowOrgV1PyTorchJob", KIND)
    if (job.get("apiVersion"), job.get("kind")) != (API_VERSION, KIND):
        raise SchemaError(f"{KIND}: apiVersion/kind must be {API_VERSION}/{KIND}")
    if not (job.get("metadata") or {}).get("name"):
        raise SchemaError(f"{KIND}.metadata.name: required")
    spec = job.get("spec") or {}
    replica_specs = spec.get("pytorchReplicaSpecs") or {}
    if "Master" not in replica_specs:
        raise SchemaError(f"{KIND}.spec.pytorchReplicaSpecs: needs a Master")
    run_policy = spec.get("runPolicy") or {}
    if run_policy.get("cleanPodPolicy", "None") not in CLEAN_POD_POLICIES:
        raise SchemaError(f"{KIND}.spec.runPolicy.cleanPodPolicy: one of {CLEAN_POD_POLICIES}")
    for kind, replica in replica_specs.items():
        where = f"{KIND}.spec.pytorchReplicaSpecs.{kind}"
        if kind not in REPLICA_TYPES:
            raise SchemaError(f"{where}: replica type must be one of {REPLICA_TYPES}")
        if replica.get("restartPolicy", "Never") not in RESTART_POLICIES:
            raise SchemaError(f"{where}.restartPolicy: one of {RESTART_POLICIES}")
        if kind == "Master" and replica.get("replicas", 1) != 1:
            raise SchemaError(f"{where}.replicas: a PyTorchJob has exactly one Master")
        containers = (replica.get("template") or {}).get("spec", {}).get("containers") or []
        training = [c for c in containers if c.get("name") == CONTAINER]
        if not training:
            raise SchemaError(f"{where}: no container named {CONTAINER!r}")
        ports = [p for p in training[0].get("ports") or [] if p.get("name") == PORT_NAME]
        if kind == "Master" and not ports:
            raise SchemaError(f"{where}: the {CONTAINER!r} container needs a port {PORT_NAME!r}")
    return model


def job_state(job: Any) -> str:
    """The latest condition of a job (the SDK's model), e.g. Running; Pending before any."""
    conditions = (job.status.conditions if job.status else None) or []
    return conditions[-1].type if conditions else "Pending"


def describe_progress(job: Any) -> str:
    """One line on a job's state and its replicas' pods (active, succeeded, failed)."""
    parts = [job_state(job)]
    statuses = (job.status.replica_statuses if job.status else None) or {}
    for kind in sorted(statuses):
        status = statuses[kind]
        counts = {
            "active": status.active or 0,
            "succeeded": status.succeeded or 0,
            "failed": status.failed or 0,
        }
        parts.append(f"{kind}: " + ", ".join(f"{n} {what}" for what, n in counts.items() if n))
    conditions = (job.status.conditions if job.status else None) or []
    if conditions and conditions[-1].message:
        parts.append(conditions[-1].message)
    return "; ".join(parts)


def run_pytorchjob(
    job: Mapping[str, Any],
    timeout_s: float,
    poll_s: float,
    report: Callable[[str], None] = logger.info,
) -> None:
    """Create `job` (or find it, when a retried task created it before) and wait until it
    succeeds, reporting each change of its progress; a failed job is recreated once its
    pods are gone (its training state stays on the claim, so the new one resumes)."""
    from kubeflow.training import TrainingClient

    metadata = job["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    client = TrainingClient(namespace=namespace, job_kind=KIND)
    existing = _find(client, name, namespace)
    if existing is not None and job_state(existing) == "Failed":
        report(f"{KIND} {namespace}/{name} failed before: deleting it to start again")
        client.delete_job(name, namespace)
        _wait_gone(client, name, namespace, poll_s)
        existing = None
    if existing is None:
        client.create_job(job=validate_pytorchjob(job), namespace=namespace)
        report(f"created {KIND} {namespace}/{name}")
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        current = client.get_job(name, namespace)
        progress = describe_progress(current)
        if progress != last:
            report(f"{KIND} {name}: {progress}")
            last = progress
        state = job_state(current)
        if state == "Succeeded":
            return
        if state == "Failed":
            raise RuntimeError(f"{KIND} {namespace}/{name} failed: {progress}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{KIND} {namespace}/{name} still {state} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def _find(client: Any, name: str, namespace: str) -> Any | None:
    try:
        return client.get_job(name, namespace)
    except RuntimeError as err:  # the SDK wraps the API's 404 (and every other error) so
        if "Not Found" in str(err) or "(404)" in str(err):
            return None
        raise


def _wait_gone(client: Any, name: str, namespace: str, poll_s: float) -> None:
    while _find(client, name, namespace) is not None:
        time.sleep(poll_s)

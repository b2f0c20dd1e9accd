"""Run a PyTorchJob's pods as local processes, each in the environment Kubeflow's training
operator (kubeflow.org/v1, release 1.9) gives a replica's training container."""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reid_core.cluster.pytorchjob import CONTAINER, PORT_NAME

Job = Mapping[str, Any]


def _training_container(job: Job, kind: str) -> dict[str, Any]:
    containers = job["spec"]["pytorchReplicaSpecs"][kind]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == CONTAINER)


def operator_environment(job: Job, kind: str, index: int, master_addr: str) -> dict[str, str]:
    """What the operator adds: the master's address and port (as MASTER_* and PET_MASTER_*),
    WORLD_SIZE = pods × processes per pod, RANK = the pod's rank (Master 0, Worker i → i + 1,
    also as PET_NODE_RANK), PET_NNODES = pods and PET_NPROC_PER_NODE as the job gives it."""
    spec = job["spec"]
    pods = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    nproc = spec.get("nprocPerNode")
    port = next(
        p["containerPort"] for p in _training_container(job, "Master")["ports"]
        if p["name"] == PORT_NAME
    )  # fmt: skip
    rank = index + (1 if kind == "Worker" else 0)
    env = {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": str(port),
        "PET_MASTER_PORT": str(port),
        "MASTER_ADDR": master_addr,
        "PET_MASTER_ADDR": master_addr,
        "WORLD_SIZE": str(pods * (int(nproc) if nproc and nproc.isdigit() else 1)),
        "RANK": str(rank),
        "PET_NODE_RANK": str(rank),
        "PET_NNODES": str(pods),
    }
    if nproc is not None:
        env["PET_NPROC_PER_NODE"] = nproc
    return env


def run_job_locally(
    job: Job, base_env: Mapping[str, str], logs: Path, port: int, bin_dir: Path,
    timeout: float = 600,
) -> None:  # fmt: skip
    """Start every replica's training container command (the executable from `bin_dir`) on
    this machine, the master listening on `port`, and wait for all; a failure raises with
    that pod's output."""
    job = copy.deepcopy(job)
    for port_spec in _training_container(job, "Master")["ports"]:
        if port_spec["name"] == PORT_NAME:
            port_spec["containerPort"] = port
    env_of_job = {e["name"]: e["value"] for e in _training_container(job, "Master")["env"]
                  if "value" in e}  # fmt: skip
    pods = []
    for kind, replica in job["spec"]["pytorchReplicaSpecs"].items():
        container = _training_container(job, kind)
        command = [str(bin_dir / container["command"][0]), *container["args"]]
        for index in range(replica["replicas"]):
            env = {**base_env, **env_of_job, **operator_environment(job, kind, index, "127.0.0.1")}
            log = logs / f"{kind.lower()}-{index}.log"
            with open(log, "wb") as out:
                pods.append((log, subprocess.Popen(command, env=env, stdout=out,
                                                   stderr=subprocess.STDOUT)))  # fmt: skip
    try:
        for log, pod in pods:
            if pod.wait(timeout=timeout) != 0:
                raise RuntimeError(f"{log.stem} failed:\n{log.read_text()}")
    finally:
        for _, pod in pods:
            if pod.poll() is None:
                pod.kill()
                pod.wait()

"""Run a data-parallel stage as several worker processes on this machine, through torchrun.

The stage calls `run_as_workers` when it should run on more processes than this one (several
GPUs in a pod); the workers are `reid <stage>` commands with the same ports and config, so each
finds its rank in the environment torchrun gives it and trains as one job with the others.

Inside a training-operator pod torchrun takes the job's shape from the PET_* variables the
operator sets (nodes, this node's rank, the master's address); elsewhere the workers meet on
this machine alone (`--standalone`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from reid_core.config import ReidConfig, config_to_yaml
from reid_core.stages import STAGES, PortPaths

OPERATOR_NODES_ENV = "PET_NNODES"


def worker_command(
    stage: str, config_path: Path, inputs: PortPaths, outputs: PortPaths
) -> list[str]:
    """The `reid <stage>` arguments that run `stage` on these ports with the config file."""
    args = [stage, "--config", str(config_path)]
    spec = STAGES[stage]
    for ports, paths in ((spec.inputs, inputs), (spec.outputs, outputs)):
        for port in ports:
            value = paths[port.name]
            for path in value if isinstance(value, tuple) else (value,):
                args += [f"--{port.name}", str(path)]
    return args


def launcher_command(procs: int) -> list[str]:
    """torchrun for `procs` workers on this node: of the operator's job when its PET_*
    variables are set, else of this machine alone."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs}"]
    if OPERATOR_NODES_ENV not in os.environ:
        command.append("--standalone")
    return command


def run_as_workers(
    stage: str, config: ReidConfig, inputs: PortPaths, outputs: PortPaths, procs: int
) -> dict[str, float]:
    """Run `stage` as `procs` data-parallel workers and return rank 0's metrics (the stage's
    `metrics` output, which only rank 0 writes)."""
    with tempfile.TemporaryDirectory(prefix=f"reid-{stage}-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(config_to_yaml(config))
        command = [
            *launcher_command(procs),
            "-m",
            "reid_core.cli",
            *worker_command(stage, config_path, inputs, outputs),
        ]
        print(f"{stage}: {procs} data-parallel workers: {' '.join(command)}", file=sys.stderr)
        finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise RuntimeError(
            f"{stage}: the data-parallel workers failed (torchrun exit {finished.returncode}); "
            "their output is above"
        )
    return json.loads(Path(outputs["metrics"]).read_text())

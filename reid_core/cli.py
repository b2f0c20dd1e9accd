"""The `reid` command line: one subcommand per pipeline stage, plus data and pipeline tools.

A front end only: it parses arguments and calls the library. Heavy imports happen inside the
subcommand that needs them, so `reid --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid_core.stages import STAGES

DEFAULT_CONFIG = Path("params.yaml")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        action="append",
        type=Path,
        help="YAML config (repeatable; later wins). Default: params.yaml when present",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.solver.epochs=3",
    )


def _config(args: argparse.Namespace):
    from reid_core.config import load_config

    paths = args.config or ([DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else [])
    return load_config(paths, args.overrides)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    for spec in STAGES.values():
        p = sub.add_parser(spec.name, help=spec.help, description=spec.help)
        for port in spec.inputs + spec.outputs:
            if port.multiple:  # `--x A --x B` or `--x A B` (as dvc.yaml expands a list)
                p.add_argument(
                    f"--{port.name}",
                    type=Path,
                    required=True,
                    action="extend",
                    nargs="+",
                    metavar=port.name.upper(),
                    help=port.help,
                )
            else:
                p.add_argument(f"--{port.name}", type=Path, required=True, help=port.help)
        _add_config_args(p)
        p.set_defaults(handler=_run_stage, stage=spec)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser(
        "synth", help="generate the synthetic re-id dataset (Market-1501 layout)"
    )
    synth.add_argument("out", type=Path)
    for flag in ("num-ids", "num-cams", "images-per-id", "height", "width", "seed"):
        synth.add_argument(f"--{flag}", type=int)
    synth.add_argument("--style", choices=("day", "dusk"))
    _add_config_args(synth)
    synth.set_defaults(handler=_synth)

    pipeline = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile, run locally, submit")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    comp = psub.add_parser("compile", help="compile pipelines/training.py to its YAML")
    comp.add_argument("--out", type=Path, default=Path("pipelines/training.yaml"))
    local = psub.add_parser("run-local", help="run the pipeline here with kfp.local")
    local.add_argument("--workdir", type=Path, default=Path("work/kfp"))
    submit = psub.add_parser("submit", help="submit the compiled pipeline to a KFP host")
    submit.add_argument("--host", required=True)
    submit.add_argument("--experiment", default="reidflow")
    submit.add_argument("--run-name")
    for p in (local, submit):
        _add_config_args(p)
    pipeline.set_defaults(handler=_pipeline)

    ablate = sub.add_parser(
        "ablate",
        help="ablation of the training tricks (cumulative), one MLflow run per variant",
        description="Train and evaluate baseline, +BNNeck, +label smoothing, +triplet, +GeM, "
        "+IBN, +circle, +freeze, +cosine on one dataset; runs go to <experiment>-ablation.",
    )
    ablate.add_argument("--dataset", type=Path, required=True)
    ablate.add_argument("--manifest", type=Path, required=True)
    ablate.add_argument("--out", type=Path, required=True, help="Markdown table to write")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0])
    ablate.add_argument("--variants", type=int, help="only the first N variants")
    _add_config_args(ablate)
    ablate.set_defaults(handler=_ablate)

    summary = sub.add_parser("summary", help="print what the last pipeline run produced")
    summary.add_argument("--reports", type=Path, default=Path("reports"))
    _add_config_args(summary)
    summary.set_defaults(handler=_summary)
    return parser


def _run_stage(args: argparse.Namespace) -> None:
    from reid_core.stages import run_stage

    spec = args.stage
    metrics = run_stage(
        spec.name,
        _config(args),
        {p.name: getattr(args, p.name) for p in spec.inputs},
        {p.name: getattr(args, p.name) for p in spec.outputs},
    )
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    print(f"{spec.name}: {shown}")


def _synth(args: argparse.Namespace) -> None:
    from reid_core.data.synth import SynthSpec, generate

    settings = _config(args).synth.model_dump()
    for key in settings:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    counts = generate(args.out, SynthSpec(**settings))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _pipeline(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path.cwd()))
    try:
        from pipelines import tools
    except ImportError as err:
        raise SystemExit(f"error: run `reid pipeline` from the project checkout ({err})") from None
    if args.pipeline_command == "compile":
        print(f"compiled {tools.compile_pipeline(args.out)}")
        return
    config_yaml = _config_yaml(args)
    if args.pipeline_command == "run-local":
        result = tools.run_local(config_yaml, args.workdir)
        for name, task in result["tasks"].items():
            print(f"{task['state']:<10} {task.get('display_name') or name}")
        if result["status"] != "SUCCEEDED":
            raise RuntimeError(f"pipeline run failed; task logs under {result['run_dir']}")
    else:
        print(
            f"submitted run {tools.submit(args.host, config_yaml, args.experiment, args.run_name)}"
        )


def _config_yaml(args: argparse.Namespace) -> str:
    from reid_core.config import config_to_yaml

    return config_to_yaml(_config(args))


def _ablate(args: argparse.Namespace) -> None:
    from reid_core.atomic import atomic_output
    from reid_core.experiments.ablation import ABLATION_STEPS, ablation_table, run_ablation

    steps = ABLATION_STEPS[: args.variants] if args.variants else ABLATION_STEPS
    rows = run_ablation(_config(args), args.dataset, args.manifest, steps, args.seeds)
    table = ablation_table(rows)
    with atomic_output(args.out) as tmp:
        tmp.write_text(table)
    print(table)


def _summary(args: argparse.Namespace) -> None:
    from reid_core.tracking.summary import pipeline_summary

    print(pipeline_summary(args.reports, _config(args)))


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from reid_core.config import ConfigError
    from reid_core.data.errors import DatasetError
    from reid_core.stages import PortError

    try:
        args.handler(args)
    except (ConfigError, DatasetError, PortError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, ConnectionError) as err:  # parity, pseudo labels, unreachable hosts
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

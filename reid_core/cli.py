"""The `reid` command line: one subcommand per pipeline stage, plus data and pipeline tools.

A front end only: it parses arguments and calls the library. Heavy imports happen inside the
subcommand that needs them, so `reid --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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


def _add_triton_client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--url", help="host:port (default: 127.0.0.1 and the triton.*_port)")
    parser.add_argument("--model", help="served model name (default: promote.model_name)")


def _embedder(args: argparse.Namespace, config):
    from reid_core.serving.client import TritonEmbedder

    model = args.model or config.promote.model_name
    return TritonEmbedder.from_config(config.triton, model, args.url, args.protocol)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid", description=__doc__.splitlines()[0])
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="on a failure, show the traceback (any position)"
    )
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
    synth.add_argument(
        "--partial",
        choices=("none", "crop", "occlude"),
        help="make every query partial: a crop of the box, or an occluder over part of it",
    )
    _add_config_args(synth)
    synth.set_defaults(handler=_synth)
    vehicles = data.add_parser(
        "synth-vehicles",
        help="generate a synthetic vehicle re-id dataset (VehicleID or VERI-Wild layout)",
    )
    vehicles.add_argument("out", type=Path)
    vehicles.add_argument("--layout", choices=("vehicleid", "veriwild"))
    for flag in ("num-ids", "num-cams", "images-per-id", "size", "seed"):
        vehicles.add_argument(f"--{flag}", type=int)
    _add_config_args(vehicles)
    vehicles.set_defaults(handler=_synth_vehicles)

    pipeline = sub.add_parser("pipeline", help="Kubeflow Pipelines: compile, run locally, submit")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    comp = psub.add_parser("compile", help="compile pipelines/training.py to its YAML")
    comp.add_argument("--out", type=Path, default=Path("pipelines/training.yaml"))
    _add_config_args(comp)  # e.g. --set kubeflow.accelerator.type=nvidia.com/gpu
    local = psub.add_parser("run-local", help="run the pipeline here with kfp.local")
    local.add_argument("--workdir", type=Path, default=Path("work/kfp"))
    local.add_argument(
        "--runner",
        choices=("subprocess", "docker"),
        default="subprocess",
        help="run each task here (subprocess) or in a container of the project image (docker: "
        "DOCKER_HOST, REID_IMAGE, an MLflow server and an s3:// Triton repository)",
    )
    submit = psub.add_parser("submit", help="submit the compiled pipeline to a KFP host")
    submit.add_argument("--host", required=True)
    submit.add_argument("--experiment", default="reidflow")
    submit.add_argument("--run-name")
    for p in (local, submit):
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a pipeline parameter, e.g. --param source_dataset=data/market1501 "
            "--param adapt_rounds=2 (datasets and adapt_rounds default to the config's)",
        )
        _add_config_args(p)
    pipeline.set_defaults(handler=_pipeline)

    serve = sub.add_parser("serve", help="the local Triton server: install it, run it")
    serve_sub = serve.add_subparsers(dest="serve_command", required=True)
    install = serve_sub.add_parser(
        "install",
        help="install tritonserver (python backend) and its stub environment in triton.server_dir",
    )
    install.add_argument("--wheel", type=Path, help="a downloaded nvidia-pytriton wheel")
    install.add_argument("--force", action="store_true", help="reinstall over an existing one")
    run = serve_sub.add_parser(
        "run",
        help="serve a model repository on 127.0.0.1 until interrupted",
        description="Start tritonserver over the repository in poll mode (newly published "
        "versions load by themselves), wait until it is ready, stop it on Ctrl-C or SIGTERM.",
    )
    run.add_argument("--repository", help="a folder or s3://…; default: triton.repository")
    run.add_argument("--log", type=Path, help="server log file (default: this terminal)")
    for p in (install, run):
        _add_config_args(p)
    serve.set_defaults(handler=_serve)

    query = sub.add_parser(
        "query",
        help="embed images through Triton and search a gallery index",
        description="Print each image's best gallery matches; optionally draw them (PNG).",
    )
    query.add_argument("images", type=Path, nargs="+", help="query image files")
    query.add_argument("--index", type=Path, required=True, help="folder from `reid index build`")
    _add_triton_client_args(query)
    query.add_argument("--top-k", type=_positive, help="matches per image (default: index.top_k)")
    query.add_argument("--rank-list", type=Path, help="PNG of the queries and their matches")
    query.add_argument(
        "--gallery-root", type=Path, help="folder the gallery's paths are relative to"
    )
    _add_config_args(query)
    query.set_defaults(handler=_query)

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
    ablate.add_argument("--variants", type=_positive, help="only the first N variants")
    _add_config_args(ablate)
    ablate.set_defaults(handler=_ablate)

    index_cmd = sub.add_parser("index", help="gallery search index (faiss)").add_subparsers(
        dest="index_command", required=True
    )
    index_build = index_cmd.add_parser(
        "build",
        help="index gallery features for top-k search",
        description="Build a flat (exact), IVF-PQ or HNSW index (config section `index`) and "
        "write it as a folder, from one split of a features .npz (`reid evaluate`), or from a "
        "dataset's split embedded through the served model (so it matches what `reid query` "
        "embeds).",
    )
    source = index_build.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", type=Path, help="features .npz of `reid evaluate`")
    source.add_argument("--dataset", type=Path, help="dataset folder, embedded through Triton")
    index_build.add_argument("--manifest", type=Path, help="the dataset's manifest (--dataset)")
    index_build.add_argument("--out", type=Path, required=True, help="index folder to write")
    index_build.add_argument("--split", choices=("gallery", "query"), default="gallery")
    _add_triton_client_args(index_build)
    _add_config_args(index_build)
    index_build.set_defaults(handler=_index)

    models = sub.add_parser("models", help="the model registry").add_subparsers(
        dest="models_command", required=True
    )
    compare = models.add_parser(
        "compare",
        help="registered versions side by side: metrics, lineage, aliases, verdicts",
    )
    compare.add_argument("versions", type=int, nargs="*", help="versions (default: all)")
    compare.add_argument("--model", help="registered model (default: promote.model_name)")
    _add_config_args(compare)
    compare.set_defaults(handler=_models)

    rollback = sub.add_parser(
        "rollback",
        help="make the champion's predecessor champion again and serve it",
        description="Move the `champion` alias of promote.model_name back to the version it "
        "replaced and publish that version as the Triton repository's next version.",
    )
    _add_config_args(rollback)
    rollback.set_defaults(handler=_rollback)

    ui = sub.add_parser(
        "ui",
        help="the search page: find a person across a gallery from a photo",
        description="Serve the search page on ui.host:ui.port (127.0.0.1:8765 by default): "
        "search the galleries of `ui.galleries` with any registered version, compare the "
        "versions, browse the evaluation reports. Searches run the model's ONNX file with ONNX "
        "Runtime here, or through Triton with --triton. Promote and rollback appear only when "
        "REID_UI_TOKEN is set.",
    )
    ui.add_argument(
        "--reports", type=Path, default=Path("reports"), help="the pipeline's reports folder"
    )
    ui.add_argument(
        "--triton", action="store_true", help="embed through Triton (see --url, --protocol)"
    )
    _add_triton_client_args(ui)
    _add_config_args(ui)
    ui.set_defaults(handler=_ui)

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


def _flags_over(settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """`settings` (a config section) with each command-line flag that was given in place."""
    given = {key: getattr(args, key, None) for key in settings}
    return settings | {key: value for key, value in given.items() if value is not None}


def _synth(args: argparse.Namespace) -> None:
    from reid_core.data.synth import SynthSpec, generate

    spec = SynthSpec(**_flags_over(_config(args).synth.model_dump(), args))
    counts = generate(args.out, spec)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _synth_vehicles(args: argparse.Namespace) -> None:
    from reid_core.data.synth_vehicles import VehicleSpec, generate_vehicles

    spec = VehicleSpec(**_flags_over(_config(args).synth_vehicles.model_dump(), args))
    counts = generate_vehicles(args.out, spec)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _pipeline(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path.cwd()))
    try:
        from pipelines import tools
    except ModuleNotFoundError as err:
        if err.name not in ("pipelines", "pipelines.tools"):
            raise  # kfp or another package of the pipeline extra: main() names the extra
        raise SystemExit(f"error: run `reid pipeline` from the project checkout ({err})") from None
    if args.pipeline_command == "compile":
        print(f"compiled {tools.compile_pipeline(args.out, _config(args))}")
        return
    config_yaml = _config_yaml(args)
    parameters = dict(_name_value(text) for text in args.param)
    if args.pipeline_command == "run-local":
        result = tools.run_local(
            config_yaml, args.workdir, parameters=parameters, progress=True, runner=args.runner
        )
        failed = [t["display_name"] for t in result["tasks"].values() if t["state"] == "FAILED"]
        if result["status"] != "SUCCEEDED":
            raise RuntimeError(
                f"pipeline run failed in {', '.join(failed) or 'a task'}; its output is in "
                f"{result['log']}"
            )
        decision = json.loads(Path(result["outputs"]["decision"]["uri"]).read_text())
        verdict = "promoted to champion" if decision["promoted"] else "not promoted"
        print(
            f"pipeline succeeded; {decision['model_name']} version {decision['version']} {verdict}"
        )
        for reason in decision.get("reasons", []):
            print(f"  {reason}")
        print(f"task output: {result['log']}")
    else:
        run_id = tools.submit(
            args.host, config_yaml, args.experiment, args.run_name, parameters=parameters
        )
        print(f"submitted run {run_id}")


def _name_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--param takes NAME=VALUE, got {text!r}")
    return name.strip(), value


def _config_yaml(args: argparse.Namespace) -> str:
    """The config as the pipeline's parameter; a user and password in its tracking URI go to
    this process's environment (which local tasks inherit), never into the text."""
    from reid_core.config import config_to_yaml
    from reid_core.tracking.runs import configured_tracking_uri

    config = _config(args)
    configured_tracking_uri(config)
    return config_to_yaml(config)


def _serve(args: argparse.Namespace) -> None:
    from reid_core.serving.server import TritonServer, install

    triton = _config(args).triton
    if args.serve_command == "install":
        done = install(triton.server_dir, args.wheel, args.force)
        print(f"tritonserver installed in {done.root}")
        return
    server = TritonServer.from_config(triton, args.repository, args.log)
    with server:
        print(
            f"serving {server.repository} (polled every {triton.poll_seconds} s): "
            f"HTTP {server.http_url}, gRPC {server.grpc_url}; Ctrl-C stops",
            flush=True,
        )
        server.serve_until_signalled()
    print("tritonserver stopped")


def _query(args: argparse.Namespace) -> None:
    from reid_core.atomic import atomic_output
    from reid_core.serving.gallery import GalleryIndex
    from reid_core.serving.query import (
        check_query_images,
        format_matches,
        index_mismatch,
        rank_list,
        search_images,
    )

    config = _config(args)
    if args.rank_list and not args.gallery_root:
        raise FileNotFoundError("--rank-list needs --gallery-root (where the gallery images are)")
    check_query_images(args.images)
    index = GalleryIndex.load(args.index)
    with _embedder(args, config) as embedder:
        matches = search_images(embedder, index, args.images, args.top_k or config.index.top_k)
        mismatch = index_mismatch(index, embedder)
    if mismatch:
        print(f"warning: {mismatch}", file=sys.stderr)
    print(format_matches(args.images, matches))
    if args.rank_list:
        with atomic_output(args.rank_list) as tmp:
            rank_list(tmp, args.images, matches, args.gallery_root)
        print(f"rank list: {args.rank_list}")


def _ablate(args: argparse.Namespace) -> None:
    from reid_core.atomic import atomic_output
    from reid_core.experiments.ablation import ABLATION_STEPS, ablation_table, run_ablation

    steps = ABLATION_STEPS[: args.variants] if args.variants else ABLATION_STEPS
    rows = run_ablation(_config(args), args.dataset, args.manifest, steps, args.seeds)
    table = ablation_table(rows)
    with atomic_output(args.out) as tmp:
        tmp.write_text(table)
    print(table)


def _index(args: argparse.Namespace) -> None:
    from reid_core.serving.indexing import index_from_dataset, index_from_features

    config = _config(args)
    if args.features:
        index = index_from_features(args.features, args.split, config.index)
    elif not args.manifest:
        raise FileNotFoundError("--dataset needs --manifest (from `reid preprocess`)")
    else:
        index = index_from_dataset(args.dataset, args.manifest, args.split, config.index,
                                   lambda: _embedder(args, config))  # fmt: skip
    index.save(args.out)
    print(f"index {index.kind}: {index.count} items × {index.dim} dims -> {args.out}")


def _models(args: argparse.Namespace) -> None:
    from reid_core.tracking.compare import compare_versions
    from reid_core.tracking.runs import setup_mlflow

    config = _config(args)
    setup_mlflow(config)
    print(compare_versions(args.model or config.promote.model_name, args.versions or None))


def _rollback(args: argparse.Namespace) -> None:
    from reid_core.tracking.rollback import rollback
    from reid_core.tracking.runs import setup_mlflow

    config = _config(args)
    setup_mlflow(config)
    done = rollback(config)
    print(
        f"{done.model_name}: champion is v{done.restored} again (was v{done.replaced}); "
        f"served as Triton version {done.triton_version} ({done.triton_location})"
    )


def _ui(args: argparse.Namespace) -> None:
    from reid_core.ui.catalog import TritonTarget
    from reid_core.ui.server import serve

    config = _config(args)
    triton = (
        TritonTarget.from_config(config.triton, args.url, args.protocol) if args.triton else None
    )
    serve(config, args.reports, model_name=args.model, triton=triton)


def _summary(args: argparse.Namespace) -> None:
    from reid_core.tracking.summary import pipeline_summary

    print(pipeline_summary(args.reports, _config(args)))


BAD_INPUT_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
"""Failures that come from what the user gave (a file, a value): exit code 2, as do the
lookups of names reidflow itself refuses (an unknown model version, say)."""
DEBUG_FLAG = "--debug"


def main(argv: list[str] | None = None) -> int:
    """Run one command. An expected failure prints one `error:` line (the file and the
    problem) and returns 2 for bad input, 1 for a failed run; `--debug`, anywhere on the
    command line, shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in argv
    args = _build_parser().parse_args([a for a in argv if a != DEBUG_FLAG])
    try:
        args.handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        message = _missing_extra(err, args.command) or _message(err)
        print(f"error: {message}", file=sys.stderr)
        return 2 if _bad_input(err) else 1
    return 0


# The packages the extras add to the bare library (setup.cfg), by the name they are imported as
# (with their own dependencies reidflow imports: kfp's kubernetes, boto3's botocore).
PIPELINE_PACKAGES = frozenset(
    {
        "mlflow",
        "dvc",
        "great_expectations",
        "kfp",
        "kfp_server_api",
        "kubernetes",
        "kubeflow",
        "matplotlib",
        "onnxruntime",
        "boto3",
        "botocore",
    }
)
SERVING_PACKAGES = frozenset(
    {"tritonclient", "onnxruntime", "boto3", "botocore", "faiss", "starlette", "uvicorn"}
)
SERVING_COMMANDS = frozenset({"serve", "index", "query", "ui"})


def _missing_extra(err: Exception, command: str) -> str | None:
    """For a package of an extra that this install lacks, the line that names the extra."""
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    package = err.name.partition(".")[0]
    if package in SERVING_PACKAGES and (
        command in SERVING_COMMANDS or package not in PIPELINE_PACKAGES
    ):
        extra = "serving"
    elif package in PIPELINE_PACKAGES:
        extra = "pipeline"
    else:
        return None
    return (
        f"`reid {command}` needs {package}, which the bare reidflow does not install: "
        f"pip install 'reidflow[{extra}]'"
    )


def _ours(err: Exception) -> bool:
    return type(err).__module__.startswith("reid_core")


def _bad_input(err: Exception) -> bool:
    return isinstance(err, BAD_INPUT_ERRORS) or (isinstance(err, LookupError) and _ours(err))


def _message(err: Exception) -> str:
    """The error's own message, credentials redacted; for one reidflow did not expect, its
    type and a hint."""
    from reid_core.redact import redact

    text = redact(str(err).strip()) or type(err).__name__
    if _ours(err) or isinstance(err, BAD_INPUT_ERRORS):
        return _one_line(text)
    first = text.splitlines()[0]
    return f"{type(err).__name__}: {first} (rerun with {DEBUG_FLAG} for the traceback)"


def _one_line(text: str) -> str:
    """A message listing problems on lines of their own, as one line: `head: a; b`."""
    head, *rest = [line.strip() for line in text.splitlines() if line.strip()]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join([head, *rest])


if __name__ == "__main__":
    sys.exit(main())

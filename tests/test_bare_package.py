"""`pip install reidflow` alone gives a working library; the extras give the pipeline.

The project is built as a wheel and installed into a fresh venv that holds exactly its bare
dependency closure: the wheel's Requires-Dist without extras, followed through each installed
distribution's own requirements, each linked in from this venv (nothing is downloaded). There,
`pip check` must pass (the bare requirements are complete and satisfied), no package of an extra
may be importable, every library module must import, and a script run outside the checkout
generates data, reads it, trains, evaluates and exports to ONNX through the public API only.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from reid_core import cli

ROOT = Path(__file__).resolve().parents[1]

# The extras' distributions, and the names they are imported as: none may reach the bare venv.
EXTRA_DISTRIBUTIONS = {
    "mlflow": "mlflow",
    "dvc": "dvc",
    "great-expectations": "great_expectations",
    "kfp": "kfp",
    "kfp-kubernetes": "kfp.kubernetes",
    "kubeflow-training": "kubeflow.training",
    "matplotlib": "matplotlib",
    "onnxruntime": "onnxruntime",
    "boto3": "boto3",
    "tritonclient": "tritonclient",
    "faiss-cpu": "faiss",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
}
# Library packages whose every module must import in the bare venv (and reid_core.export.onnx),
# except the modules listed with the reason they need an extra: none today.
LIBRARY_PACKAGES = ("modeling", "engine", "evaluation", "data", "distill", "uda")
NEEDS_AN_EXTRA: dict[str, str] = {}


def _build_wheel(dest: Path) -> Path:
    """The project's wheel, built offline from a copy of its sources (the build leaves
    build/ and *.egg-info behind, which must not land in the checkout)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "reid_core", src / "reid_core",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "--no-cache-dir", "-q", "-w", str(dest / "dist"), str(src)])  # fmt: skip
    (wheel,) = (dest / "dist").glob("reidflow-*.whl")
    return wheel


def _wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(name).decode())


def _requirements(meta, extra: str = "") -> list[Requirement]:
    """The wheel's Requires-Dist for `extra`, or for the bare install ("")."""
    reqs = [Requirement(text) for text in meta.get_all("Requires-Dist") or []]
    if not extra:
        return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    return [r for r in reqs if r.marker is not None and "extra" in str(r.marker)
            and r.marker.evaluate({"extra": extra})]  # fmt: skip


def _closure(requirements: Iterable[Requirement]) -> dict[str, metadata.Distribution]:
    """Every distribution the requirements need, recursively (with the extras they ask of
    each other), as installed in this venv; fails on one this venv does not satisfy."""
    found: dict[str, metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo = [(req, "reidflow") for req in requirements]
    while todo:
        req, wanted_by = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} (required by {wanted_by}) is not installed in {sys.prefix}")
        assert req.specifier.contains(dist.version, prereleases=True), (
            f"{req} (required by {wanted_by}): this venv has {name} {dist.version}"
        )
        found[name] = dist
        for extra in ("", *sorted(req.extras)):
            if (name, extra) not in done:
                done.add((name, extra))
                todo += [
                    (sub, name)
                    for sub in map(Requirement, dist.requires or [])
                    if sub.marker is None or sub.marker.evaluate({"extra": extra})
                ]
    return found


def _site_packages(dist: metadata.Distribution) -> Path:
    return Path(dist.locate_file("")).resolve()


def _owners(site: Path) -> dict[tuple[str, ...], set[str]]:
    """For every path prefix under `site`, the installed distributions with files below it."""
    owners: dict[tuple[str, ...], set[str]] = {}
    for dist in metadata.distributions():
        if _site_packages(dist) != site:
            continue
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or []:
            parts = Path(file).parts
            if parts and parts[0] != "..":
                for depth in range(1, len(parts) + 1):
                    owners.setdefault(parts[:depth], set()).add(name)
    return owners


def _link_closure(dists: dict[str, metadata.Distribution], target: Path) -> None:
    """Symlink each distribution's files into `target`: a top-level entry whole (package,
    module, *.dist-info, *.libs) when only closure distributions own files below it, else (a
    namespace shared with others, such as google/ or __pycache__/) a folder made here with its
    entries linked the same way, one level down."""
    sites = {_site_packages(d) for d in dists.values()}
    assert len(sites) == 1, f"the closure is installed in several places: {sorted(sites)}"
    (site,) = sites
    owners = _owners(site)
    wanted = set(dists)
    paths = {
        Path(file).parts
        for dist in dists.values()
        for file in dist.files or []
        if Path(file).parts and Path(file).parts[0] != ".."
    }

    def link(prefix: tuple[str, ...]) -> None:
        dest = target.joinpath(*prefix)
        if owners[prefix] <= wanted or not (site.joinpath(*prefix)).is_dir():
            if not dest.exists():
                dest.symlink_to(site.joinpath(*prefix))
            return
        dest.mkdir(exist_ok=True)
        for child in sorted({p[: len(prefix) + 1] for p in paths if p[: len(prefix)] == prefix
                             and len(p) > len(prefix)}):  # fmt: skip
            link(child)

    for top in sorted({p[:1] for p in paths}):
        link(top)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done


LIBRARY_SCRIPT = """
import importlib, json, pkgutil, sys
from pathlib import Path

site, work = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
import reid_core
assert Path(reid_core.__file__).resolve().is_relative_to(site), reid_core.__file__

# every module of the library packages imports without an extra
needs_extra = set(json.loads(sys.argv[3]))
imported = []
for name in json.loads(sys.argv[4]):
    package = importlib.import_module(f"reid_core.{name}")
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name not in needs_extra:
            importlib.import_module(info.name)
            imported.append(info.name)
import reid_core.export.onnx

import numpy as np
import onnx
import torch

from reid_core.config import AugmentConfig, EvaluateConfig, LossConfig, ModelConfig, SolverConfig
from reid_core.data.manifest import build_manifest, read_manifest, write_manifest
from reid_core.data.splits import load_split
from reid_core.data.synth import SynthSpec, generate
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
from reid_core.engine.hooks import NaNGuard
from reid_core.engine.trainer import TrainData, fit
from reid_core.evaluation import evaluate_rank, extract_features, re_rank, tar_at_far
from reid_core.evaluation.protocol import evaluate_splits
from reid_core.export.onnx import ServingModel, export_onnx, onnx_interface
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss

torch.set_num_threads(2)
H, W = 32, 16
dataset = work / "dataset"
counts = generate(dataset, SynthSpec(num_ids=8, num_cams=2, images_per_id=4, height=H, width=W))
write_manifest(build_manifest(dataset, "market1501"), work / "manifest.parquet", {"domain": "x"})
manifest, meta = read_manifest(work / "manifest.parquet")
train, query, gallery = (load_split(dataset, manifest, s, H, W)
                         for s in ("train", "query", "gallery"))

torch.manual_seed(0)
data = TrainData.from_split(train)
model = create_model(ModelConfig(backbone="resnet18", base_width=8), len(set(data.labels)))
solver = SolverConfig(epochs=1, ids_per_batch=2, images_per_id=2, warmup_epochs=0.0)
fit(model, data, solver, AugmentConfig(), ReidLoss(LossConfig()), [NaNGuard()],
    state_dir=work / "state")
save_checkpoint(work / "checkpoint", model, {"height": H, "width": W})
model, _ = load_checkpoint(work / "checkpoint")

metrics = evaluate_splits(model, query, gallery, EvaluateConfig()).as_metrics()
q = extract_features(model, query.images)
g = extract_features(model, gallery.images)
reranked = re_rank(q, g, k1=4, k2=2)
rr = evaluate_rank(reranked, query.pids, gallery.pids, query.camids, gallery.camids)
tar = tar_at_far(reranked, query.pids, gallery.pids, query.camids, gallery.camids, fars=(0.1,))

onnx_path = work / "model.onnx"
export_onnx(ServingModel(model, l2_normalize=True), onnx_path, H, W, opset=18)
onnx.checker.check_model(str(onnx_path))
loaded = {m.partition(".")[0] for m in sys.modules} & set(json.loads(sys.argv[5]))
print(json.dumps({
    "imported": imported,
    "extras_loaded": sorted(loaded),
    "counts": counts,
    "train_images": len(data.labels),
    "rank1": metrics["rank1"], "mAP": metrics["mAP"],
    "rerank_mAP": float(rr.mAP), "tar_fars": len(tar.tar),
    "onnx_interface": list(onnx_interface(onnx_path)), "onnx_bytes": onnx_path.stat().st_size,
}))
"""


@pytest.mark.integration
def test_the_bare_wheel_trains_evaluates_and_exports_without_any_extra(tmp_path):
    start = time.monotonic()
    wheel = _build_wheel(tmp_path / "build")
    meta = _wheel_metadata(wheel)

    # the extras: `all` is exactly pipeline + serving; no extra package is a bare requirement
    extras = set(meta.get_all("Provides-Extra"))
    assert {"pipeline", "serving", "all", "dev", "gpu"} <= extras, extras
    as_set = {e: {str(r).split(";")[0] for r in _requirements(meta, e)} for e in extras}
    assert as_set["all"] == as_set["pipeline"] | as_set["serving"]
    bare = _requirements(meta)
    closure = _closure(bare)
    leaked = sorted(set(closure) & set(EXTRA_DISTRIBUTIONS))
    assert not leaked, f"the bare requirements pull in extras' packages: {leaked}"

    # a fresh venv with exactly the closure (no pip or setuptools of its own: this venv's pip
    # installs into it and checks it), then the wheel alone, offline
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                .stdout.strip())  # fmt: skip
    _link_closure(closure, site)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    _run([*pip, "install", "--no-deps", "--no-index", "--no-cache-dir", "-q", str(wheel)])
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, f"pip check in the bare venv:\n{check.stdout}{check.stderr}"
    installed = _run([*pip, "list", "--format", "json"]).stdout
    assert {canonicalize_name(d["name"]) for d in json.loads(installed)} == {*closure, "reidflow"}

    # no extra's package can be imported there; the source tree is not on its path
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"NUMBA_CACHE_DIR": str(tmp_path / "numba"), "OMP_NUM_THREADS": "2"}
    probe = _run(
        [str(python), "-c", "import importlib.util, json, sys\n"
         "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m.split('.')[0])"
         " and importlib.util.find_spec(m)]))", *EXTRA_DISTRIBUTIONS.values()],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert json.loads(probe.stdout) == [], f"importable in the bare venv: {probe.stdout}"

    # the library, end to end, through its public API
    work = tmp_path / "work"
    work.mkdir()
    script = tmp_path / "library.py"
    script.write_text(textwrap.dedent(LIBRARY_SCRIPT))
    extra_modules = sorted({m.partition(".")[0] for m in EXTRA_DISTRIBUTIONS.values()})
    done = _run(
        [str(python), str(script), str(site), str(work), json.dumps(sorted(NEEDS_AN_EXTRA)),
         json.dumps(LIBRARY_PACKAGES), json.dumps(extra_modules)],
        cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["extras_loaded"] == []
    for package in LIBRARY_PACKAGES:
        assert any(m.startswith(f"reid_core.{package}.") for m in report["imported"]), package
    assert "reid_core.evaluation.reports" in report["imported"]  # matplotlib only when drawing
    assert report["train_images"] == report["counts"]["train"] > 0
    assert 0.0 <= report["rank1"] <= 1.0 and 0.0 < report["mAP"] <= 1.0
    assert 0.0 < report["rerank_mAP"] <= 1.0 and report["tar_fars"] == 1
    assert report["onnx_interface"][:2] == [32, 16] and report["onnx_bytes"] > 10_000

    # `reid` is there too: a library command runs, a pipeline command names its extra
    reid = str(venv / "bin" / "reid")
    _run([reid, "data", "synth", str(work / "cli_synth"), "--num-ids", "4", "--images-per-id",
          "4", "--height", "32", "--width", "16"], cwd=tmp_path, env=env)  # fmt: skip
    for folder in ("pipelines", "components"):  # `reid pipeline` imports them from the cwd
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("*.yaml"))
    commands = {  # the command line, and the first package of the extra it imports
        "train": (["--dataset", str(work / "dataset"), "--manifest",
                   str(work / "manifest.parquet"), "--checkpoint", str(work / "ckpt"),
                   "--metrics", str(work / "metrics.json")], "mlflow"),
        "pipeline": (["compile", "--out", str(work / "training.yaml")], "kfp"),
    }  # fmt: skip
    for command, (args, package) in commands.items():
        done = subprocess.run(
            [reid, command, *args], cwd=work, env=env, capture_output=True, text=True
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"error: `reid {command}` needs {package}, which the bare reidflow does not "
            "install: pip install 'reidflow[pipeline]'"
        ], done.stderr
    print(f"bare package test: {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize(
    ("argv", "handler", "missing", "extra"),
    [
        (["summary"], "_summary", "mlflow", "pipeline"),
        (["models", "compare"], "_models", "mlflow.tracking", "pipeline"),
        (
            ["ablate", "--dataset", "d", "--manifest", "m", "--out", "o"],
            "_ablate",
            "kfp",
            "pipeline",
        ),
        (["summary"], "_summary", "onnxruntime", "pipeline"),  # the export stage's parity gate
        (["index", "build", "--features", "f.npz", "--out", "o"], "_index", "faiss", "serving"),
        (["query", "q.jpg", "--index", "i"], "_query", "onnxruntime", "serving"),
        (["query", "q.jpg", "--index", "i"], "_query", "tritonclient.http", "serving"),
        (["ui"], "_ui", "starlette", "serving"),
        (["ui"], "_ui", "mlflow", "pipeline"),  # the registry it lists
    ],
)
def test_a_command_missing_a_package_of_an_extra_names_the_extra(
    monkeypatch, capsys, argv, handler, missing, extra
):
    def lacking(args):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(cli, handler, lacking)
    assert cli.main(argv) == 1
    package = missing.partition(".")[0]
    assert capsys.readouterr().err.splitlines() == [
        f"error: `reid {argv[0]}` needs {package}, which the bare reidflow does not install: "
        f"pip install 'reidflow[{extra}]'"
    ]


def test_a_missing_package_of_no_extra_is_reported_as_any_other_failure(monkeypatch, capsys):
    def lacking(args):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")

    monkeypatch.setattr(cli, "_summary", lacking)
    assert cli.main(["summary"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: ModuleNotFoundError: No module named 'yaml' (rerun with --debug for the traceback)"
    ]

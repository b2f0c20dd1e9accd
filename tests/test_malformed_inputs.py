"""The malformed-input matrix: every `reid` command × every kind of file it reads.

The inputs are made once by the commands themselves; each example copies the one it damages
and breaks it as hypothesis draws (corrupt or cut bytes, a missing file or key, a value of the
wrong type, a path out of the dataset). Every run must end with exit code 2, one `error:` line
naming the damaged file (or config key), no traceback, and nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reid_core.artifacts import EvaluationRecord, ExportRecord, IndexInfo, PromotionRecord
from reid_core.cli import _build_parser, main
from reid_core.config import ConfigError, ReidConfig, load_config
from reid_core.data.manifest import MANIFEST_COLUMNS
from reid_core.engine.checkpoint import META, MODEL_YAML, WEIGHTS
from reid_core.json_files import fits
from reid_core.sources import FetchRecord

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"

PROMOTION = PromotionRecord(
    model_name="reid", version=1, promoted=True, reasons=["pass champion: none yet"],
    previous_champion=None, evaluation_set="0" * 16, triton_version=1,
    triton_version_path="serving/model_repository/reid/1", triton_repository="serving",
    mAP=0.5, rank1=0.75,
)  # fmt: skip

# Each command as it would run on the valid inputs: {kind} is an input of that kind (the one
# damaged, or its valid original), {out} an empty folder for what the command writes.
# `--config` tiny.yaml and a config file (damaged in the config column) are appended.
INVOCATIONS: dict[str, list[str]] = {
    "fetch": ["fetch", "--dataset", "{out}/ds", "--set", "datasets.source={dataset}"],
    "preprocess": ["preprocess", "--dataset", "{dataset}", "--manifest", "{out}/m.parquet",
                   "--report", "{out}/r.json"],
    "preprocess a fetched dataset": ["preprocess", "--dataset", "{fetched}", "--manifest",
                                     "{out}/m.parquet", "--report", "{out}/r.json"],
    "train": ["train", "--dataset", "{dataset}", "--manifest", "{manifest}",
              "--checkpoint", "{out}/ckpt", "--metrics", "{out}/m.json"],
    "distill": ["distill", "--dataset", "{dataset}", "--manifest", "{manifest}",
                "--teacher", "{checkpoint}", "--checkpoint", "{out}/ckpt", "--metrics",
                "{out}/m.json"],
    "adapt": ["adapt", "--dataset", "{dataset}", "--manifest", "{manifest}", "--model",
              "{checkpoint}", "--checkpoint", "{out}/ckpt", "--metrics", "{out}/m.json"],
    "evaluate": ["evaluate", "--dataset", "{dataset}", "--manifest", "{manifest}", "--model",
                 "{checkpoint}", "--metrics", "{out}/m.json", "--features", "{out}/f",
                 "--report", "{out}/r"],
    "export": ["export", "--dataset", "{dataset}", "--manifest", "{manifest}", "--model",
               "{checkpoint}", "--onnx", "{out}/onnx"],
    "promote": ["promote", "--onnx", "{onnx}", "--model", "{checkpoint}", "--evaluation",
                "{evaluation}", "--decision", "{out}/d.json", "--markdown", "{out}/d.md",
                "--set", "triton.repository={out}/repository"],
    "data synth": ["data", "synth", "{out}/ds"],
    "data synth-vehicles": ["data", "synth-vehicles", "{out}/ds", "--num-ids", "5",
                            "--images-per-id", "3", "--size", "32"],
    "pipeline compile": ["pipeline", "compile", "--out", "{out}/pipeline.yaml"],
    "pipeline run-local": ["pipeline", "run-local", "--workdir", "{out}/kfp"],
    "pipeline submit": ["pipeline", "submit", "--host", "http://127.0.0.1:9"],
    "serve install": ["serve", "install", "--wheel", "{wheel}", "--force", "--set",
                      "triton.server_dir={out}/server"],
    "serve run": ["serve", "run", "--repository", "{out}/repository"],
    "query": ["query", "{image}", "--index", "{index}", "--url", "127.0.0.1:9"],
    "ablate": ["ablate", "--dataset", "{dataset}", "--manifest", "{manifest}",
               "--out", "{out}/ablation.md"],
    "index build": ["index", "build", "--features", "{features}", "--out", "{out}/index"],
    "index build --dataset": ["index", "build", "--dataset", "{dataset}", "--manifest",
                              "{manifest}", "--out", "{out}/index", "--url", "127.0.0.1:9"],
    "models compare": ["models", "compare"],
    "rollback": ["rollback"],
    "ui": ["ui", "--set", "ui.workdir={out}/ui"],  # a good config serves: only the config column
    "summary": ["summary", "--reports", "{reports}"],
}  # fmt: skip


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "") -> Iterator[str]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix.strip()
    for action in subparsers:
        for name, child in action.choices.items():
            yield from _leaf_commands(child, f"{prefix} {name}")


def _command(argv: list[str]) -> str:
    words = []
    for word in argv:
        if word.startswith(("-", "{")):
            break
        words.append(word)
    return " ".join(words)


def test_the_matrix_covers_every_command():
    commands = {_command(argv) for argv in INVOCATIONS.values()}
    assert commands == set(_leaf_commands(_build_parser()))


def _inputs_of(command: str) -> list[str]:
    return sorted(set(re.findall(r"\{(\w+)\}", " ".join(INVOCATIONS[command]))) - {"out"})


# ---------------------------------------------------------------- the valid inputs, made once


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """One valid input of every kind, written by the commands themselves (tiny config)."""
    ws = tmp_path_factory.mktemp("made")
    store = f"sqlite:///{ws / 'mlflow.db'}"
    env = {
        "MLFLOW_TRACKING_URI": store,
        "MLFLOW_REGISTRY_URI": store,  # set so that it is unset again (mlflow sets it too)
        "GX_ANALYTICS_ENABLED": "false",
        "REID_PIPELINE_RUN_ID": "malformed-inputs",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)

        def reid(*argv: str | Path) -> None:
            code, err = _run([str(a) for a in argv] + ["--config", str(TINY)])
            assert code == 0, err

        reid("data", "synth", ws / "ds", "--num-ids", "8")
        reid("fetch", "--dataset", ws / "fetched", "--set", f"datasets.source={ws / 'ds'}")
        reid("preprocess", "--dataset", ws / "ds", "--manifest", ws / "m.parquet",
             "--report", ws / "validation.json")  # fmt: skip
        reid("train", "--dataset", ws / "ds", "--manifest", ws / "m.parquet",
             "--checkpoint", ws / "teacher", "--metrics", ws / "train.json")  # fmt: skip
        reid("export", "--dataset", ws / "ds", "--manifest", ws / "m.parquet",
             "--model", ws / "teacher", "--onnx", ws / "onnx")  # fmt: skip
        reid("evaluate", "--dataset", ws / "ds", "--manifest", ws / "m.parquet",
             "--model", ws / "teacher", "--metrics", ws / "eval.json", "--features",
             ws / "features", "--report", ws / "report")  # fmt: skip
        features = next((ws / "features").glob("*.npz"))
        reid("index", "build", "--features", features, "--out", ws / "index")
        reports = ws / "reports"
        (reports / "eval").mkdir(parents=True)
        (reports / "validation").mkdir()
        shutil.copy(ws / "eval.json", reports / "eval" / "teacher.json")
        shutil.copy(ws / "validation.json", reports / "validation" / "source.json")
        PROMOTION.save_file(reports / "promotion.json")  # promote's, without a registry run
        wheel = ws / "nvidia_pytriton-0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:  # the layout install reads, no server
            archive.writestr("pytriton/tritonserver/bin/tritonserver", b"\x7fELF")
        yield {
            "dataset": ws / "ds",
            "fetched": ws / "fetched",
            "manifest": ws / "m.parquet",
            "checkpoint": ws / "teacher",
            "onnx": ws / "onnx",
            "evaluation": ws / "eval.json",
            "features": features,
            "index": ws / "index",
            "image": next((ws / "ds" / "query").glob("*.jpg")),
            "reports": reports,
            "wheel": wheel,
            "config": TINY,
        }
        import mlflow

        # the stages ran in this process: later modules must not inherit this module's store
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


# ------------------------------------------------------------------------------- the damages


@dataclass(frozen=True)
class Damage:
    """What was done to an input (shown when an example fails), the change itself, and the
    words of which the error line must hold one: the file's name or the config key."""

    what: str
    apply: Callable[[Path], None]
    named: tuple[str, ...] = ()


def _cut(fraction: float, noise: bytes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)] + noise)

    return apply


def _replace(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _bytes_damage(noise_after_cut: bool = True) -> st.SearchStrategy[Damage]:
    """Damage to a binary file: cut short (plus noise), replaced by noise, or removed.

    A JPEG cut short and ending in bytes that read as a marker is decoded by libjpeg with the
    rest grey (a warning, no error), as Pillow and every reader built on it do: images are
    only cut."""
    cut = st.builds(
        lambda f, n: Damage(f"cut to {f:.0%} + {n!r}", _cut(f, n)),
        st.floats(0, 0.9, allow_subnormal=False),
        st.binary(max_size=8 if noise_after_cut else 0),
    )
    noise = st.binary(max_size=64).map(lambda b: Damage(f"replaced by {b!r}", _replace(b)))
    return st.one_of(cut, noise, st.just(Damage("removed", _remove)))


def _edit(
    loads: Callable[[str], object], dumps: Callable[[object], str], change: Callable[[dict], object]
) -> Callable[[Path], None]:
    """A damage that rewrites a file holding one mapping (JSON, YAML) through `change`."""

    def apply(path: Path) -> None:
        path.write_text(dumps(change(loads(path.read_text()))))

    return apply


def _without(key: str, mapping: dict) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)  # fmt: skip


def _json_damage(required: dict[str, type | tuple[type, ...]]) -> st.SearchStrategy[Damage]:
    """Damage to a JSON object file: not JSON, not an object, a required key dropped or given
    a value of another type."""

    edit = partial(_edit, json.loads, json.dumps)

    def dropped(key: str) -> Damage:
        return Damage(f"without {key!r}", edit(partial(_without, key)))

    def retyped(key: str, value: object) -> Damage:
        return Damage(f"{key!r} = {value!r}", edit(lambda d: {**d, key: value}))

    keys = st.sampled_from(sorted(required))
    wrong = st.tuples(keys, WRONG_VALUES).filter(lambda kv: not fits(kv[1], required[kv[0]]))
    return st.one_of(
        st.binary(max_size=16).map(lambda b: Damage(f"not JSON {b!r}", _replace(b"{" + b))),
        st.sampled_from(["[]", "3", '"text"', "null"]).map(
            lambda t: Damage(f"top level {t}", _replace(t.encode()))
        ),
        keys.map(dropped),
        wrong.map(lambda kv: retyped(*kv)),
    )


def _in_folder(files: dict[str, st.SearchStrategy[Damage]]) -> st.SearchStrategy[Damage]:
    """Damage to one file of a folder; the error must name that file."""

    def inside(name: str, damage: Damage) -> Damage:
        return Damage(f"{name} {damage.what}", lambda folder: damage.apply(folder / name), (name,))

    return st.one_of(*(s.map(lambda d, n=name: inside(n, d)) for name, s in files.items()))


def _table_damage() -> st.SearchStrategy[Damage]:
    """Damage to the manifest's table: a column dropped or of the wrong type, an image path
    that leaves the dataset."""

    def rewrite(change: Callable[[pa.Table], pa.Table]) -> Callable[[Path], None]:
        def apply(path: Path) -> None:
            table = pq.read_table(path)
            pq.write_table(change(table), path)

        return apply

    def drop(column: str) -> Damage:
        return Damage(f"without column {column}", rewrite(lambda t: t.drop_columns([column])))

    def as_text(column: str) -> Damage:
        def change(table: pa.Table) -> pa.Table:
            i = table.schema.get_field_index(column)
            return table.set_column(i, column, pa.array(["x"] * table.num_rows))

        return Damage(f"{column} as text", rewrite(change))

    def escaping(target: str) -> Damage:
        def change(table: pa.Table) -> pa.Table:
            paths = table.column("path").to_pylist()
            i = table.schema.get_field_index("path")
            return table.set_column(i, "path", pa.array([target, *paths[1:]]))

        return Damage(f"first path {target!r}", rewrite(change))

    outside = st.sampled_from(["../m.parquet", "/etc/passwd", "query/../../escape.jpg", ""])
    return st.one_of(
        st.sampled_from(MANIFEST_COLUMNS).map(drop),
        st.sampled_from(["pid", "camid", "width", "height"]).map(as_text),
        outside.map(escaping),
    )


def _npz_damage(required: list[str]) -> st.SearchStrategy[Damage]:
    """Damage to a NumPy archive: an array dropped, one row short, or pickled objects."""

    def edit(what: str, change: Callable[[dict], None]) -> Damage:
        def apply(path: Path) -> None:
            with np.load(path) as data:
                arrays = dict(data)
            change(arrays)
            with open(path, "wb") as file:
                np.savez(file, **arrays)

        return Damage(what, apply)

    keys = st.sampled_from(required)
    return st.one_of(
        keys.map(lambda k: edit(f"without {k}", lambda a: a.pop(k))),
        keys.map(lambda k: edit(f"{k} a row short", lambda a: a.update({k: a[k][:-1]}))),
        keys.map(lambda k: edit(f"{k} pickled", lambda a: a.update({k: np.array([object()])}))),
    )


def _yaml_damage() -> st.SearchStrategy[Damage]:
    """Damage to a checkpoint's model.yaml: unreadable, not a mapping, a key dropped, values
    of the wrong type or out of range."""

    edit = partial(_edit, yaml.safe_load, yaml.safe_dump)

    def dropped(key: str) -> Damage:
        return Damage(f"without {key}", edit(partial(_without, key)))

    def classes(value: object) -> Damage:
        return Damage(f"num_classes {value!r}", edit(lambda d: {**d, "num_classes": value}))

    def backbone(value: object) -> Damage:
        return Damage(f"backbone {value!r}", edit(lambda d: {**d, "model": {"backbone": value}}))

    return st.one_of(
        st.sampled_from([b"model: [", b"- 1\n", b"!!python/name:os.system\n", b"\xff\xfe"]).map(
            lambda b: Damage(f"replaced by {b!r}", _replace(b))
        ),
        st.sampled_from(["model", "num_classes"]).map(dropped),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=10**7), WRONG_VALUES).map(
            classes
        ),
        st.one_of(st.sampled_from(["nosuchnet", ""]), WRONG_VALUES).map(backbone),
    )


def _config_damage() -> st.SearchStrategy[Damage]:
    """Damage to a config file: not text, not YAML, not a mapping, an unknown key, a value of
    the wrong type at any key of the schema, an unusable `_base_`."""
    leaves = sorted(ReidConfig().flat())

    def at(key: str, value: object) -> bytes:
        tree: object = value
        for part in reversed(key.split(".")):
            tree = {part: tree}
        return yaml.safe_dump(tree).encode()

    def named(key: str) -> tuple[str, ...]:
        return (key, key.split(".")[0])

    sections = st.sampled_from(sorted({k.split(".")[0] for k in leaves}))
    unknown = st.builds(
        lambda s, k: Damage(f"unknown key {s}.{k}", _replace(at(f"{s}.{k}", 1)), (f"{s}.{k}",)),
        sections,
        st.from_regex(r"zz[a-z]{1,6}", fullmatch=True),
    )
    wrong = st.builds(
        lambda k, v: Damage(f"{k} = {v!r}", _replace(at(k, v)), named(k)),
        st.sampled_from(leaves),
        WRONG_VALUES,
    )
    whole = st.sampled_from(
        [b"\xff\xfe\x00", b"train: [", b"- 1\n", b"3\n", b"_base_: 3\n", b"_base_: [null]\n",
         b"_base_: no-such-file.yaml\n", b"!!python/object/apply:os.system [ls]\n"]
    ).map(lambda b: Damage(f"replaced by {b!r}", _replace(b)))  # fmt: skip
    return st.one_of(whole, unknown, wrong)


def _dataset_damage() -> st.SearchStrategy[Damage]:
    def to_file(path: Path) -> None:
        shutil.rmtree(path)
        path.write_bytes(b"not a folder")

    def emptied(path: Path) -> None:
        shutil.rmtree(path)
        path.mkdir()

    return st.sampled_from(
        [Damage("removed", _remove), Damage("a file", to_file), Damage("emptied", emptied)]
    )


DAMAGES: dict[str, st.SearchStrategy[Damage]] = {
    "dataset": _dataset_damage(),
    "fetched": _in_folder(
        {FetchRecord.FILE: _json_damage(FetchRecord.required_keys())}
    ),
    "manifest": st.one_of(_bytes_damage(), _table_damage()),
    "checkpoint": _in_folder(
        {WEIGHTS: _bytes_damage(), MODEL_YAML: _yaml_damage(),
         META: _json_damage({"height": int, "width": int})}
    ),
    "onnx": _in_folder(
        {"model.onnx": _bytes_damage(),
         ExportRecord.FILE: _json_damage(ExportRecord.required_keys())}
    ),
    "evaluation": _json_damage(EvaluationRecord.required_keys()),
    "features": st.one_of(
        _bytes_damage(),
        _npz_damage([f"gallery_{k}" for k in ("feats", "pids", "camids", "paths")]),
    ),
    "index": _in_folder(
        {"index.faiss": _bytes_damage(),
         "metadata.npz": st.one_of(_bytes_damage(), _npz_damage(["paths", "pids", "camids"])),
         IndexInfo.FILE: _json_damage({**IndexInfo.required_keys(), "format_version": int})}
    ),
    "image": _bytes_damage(noise_after_cut=False),
    "reports": _in_folder(
        {"eval/teacher.json": _json_damage(EvaluationRecord.required_keys()),
         "validation/source.json": _json_damage({"summary": dict}),
         "promotion.json": _json_damage(PromotionRecord.required_keys())}
    ),
    "wheel": _bytes_damage(),
    "config": _config_damage(),
}  # fmt: skip


def test_every_input_kind_has_damages():
    kinds = {kind for command in INVOCATIONS for kind in _inputs_of(command)}
    assert kinds | {"config"} == set(DAMAGES)


# ------------------------------------------------------------------------------- the matrix

CASES = [
    pytest.param(command, kind, id=f"{command}:{kind}")
    for command in INVOCATIONS
    for kind in ["config", *_inputs_of(command)]
]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize(("command", "kind"), CASES)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_damaged_input_gets_one_line_exit_2_and_nothing_written(
    made, tmp_path_factory, command, kind, data
):
    case = tmp_path_factory.mktemp("case")
    out = case / "out"
    out.mkdir()
    damaged = case / f"damaged-{made[kind].name}"
    if made[kind].is_dir():
        shutil.copytree(made[kind], damaged)
    else:
        shutil.copy(made[kind], damaged)
    damage = data.draw(DAMAGES[kind], label="damage")
    damage.apply(damaged)
    paths = {**{k: str(v) for k, v in made.items()}, kind: str(damaged), "out": str(out)}
    argv = [a.format(**paths) for a in INVOCATIONS[command]]
    argv += ["--config", str(TINY), "--config", paths["config"]]
    if kind == "config":  # the damage must make the config unusable, not only different
        overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        with contextlib.suppress(ConfigError):
            load_config([TINY, damaged], overrides)
            event("the damaged config is still valid")
            return
    before = _snapshot(case)

    code, err = _run(argv)

    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    assert code == 2, f"{damage.what}: exit {code}: {lines[-1]}"
    named = damage.named or (damaged.name,)
    assert any(word in lines[-1] for word in named), f"{damage.what}: {lines[-1]}"
    assert _snapshot(case) == before, f"{damage.what}: something was written"
    assert not list(out.iterdir())


def test_the_pipeline_commands_refuse_malformed_parameters(capsys):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for param in ("no-equals-sign", "=value"):
        assert main(["pipeline", "run-local", "--param", param, "--config", str(TINY)]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith("error: --param takes NAME=VALUE") and param in line

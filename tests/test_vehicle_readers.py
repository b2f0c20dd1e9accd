"""VehicleID and VERI-Wild read from the generator's exact layouts; each bad list is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_core.config import DataConfig
from reid_core.data.cameras import NO_CAMERA
from reid_core.data.errors import DatasetError
from reid_core.data.manifest import build_manifest
from reid_core.data.readers import READERS, read_dataset
from reid_core.data.synth_vehicles import VehicleSpec, generate_vehicles
from reid_core.validation.suite import validate_manifest

SPLITS = "train_test_split"


def vehicles(root: Path, layout: str, **spec) -> Path:
    settings = {"num_ids": 12, "images_per_id": 4, "num_cams": 3, "size": 32} | spec
    generate_vehicles(root, VehicleSpec(layout=layout, **settings))
    return root


@pytest.fixture(scope="module")
def vehicleid(tmp_path_factory) -> Path:
    return vehicles(tmp_path_factory.mktemp("vehicleid") / "ds", "vehicleid")


@pytest.fixture(scope="module")
def veriwild(tmp_path_factory) -> Path:
    return vehicles(tmp_path_factory.mktemp("veriwild") / "ds", "veriwild")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_vehicleid_draws_one_gallery_image_per_vehicle_without_cameras(vehicleid):
    df = read_dataset(vehicleid, "vehicleid", "800")
    assert (df["camid"] == NO_CAMERA).all()
    test = df[df["split"] != "train"]
    listed = [line.split() for line in lines(vehicleid / SPLITS / "test_list_800.txt")]
    assert sorted(test["path"]) == sorted(f"image/{name}.jpg" for name, _ in listed)
    assert dict(zip(test["path"], test["pid"], strict=True)) == {
        f"image/{name}.jpg": int(vid) + 1 for name, vid in listed
    }
    gallery = test[test["split"] == "gallery"]
    assert gallery["pid"].is_unique and set(gallery["pid"]) == set(test["pid"])
    assert set(df.loc[df["split"] == "train", "pid"]).isdisjoint(test["pid"])
    # the draw is seeded: the same manifest every time
    assert read_dataset(vehicleid, "vehicleid", "800").equals(df)


def test_vehicleid_test_lists_are_nested_and_the_default_is_the_smallest(vehicleid):
    ids = {
        size: set(read_dataset(vehicleid, "vehicleid", size).query("split != 'train'")["pid"])
        for size in ("800", "1600", "2400")
    }
    assert ids["800"] < ids["1600"] < ids["2400"]
    assert read_dataset(vehicleid, "vehicleid").equals(read_dataset(vehicleid, "vehicleid", "800"))


def test_veriwild_reads_cameras_from_vehicle_info_and_one_query_per_vehicle(veriwild):
    df = read_dataset(veriwild, "veriwild", "small")
    info = {}
    for line in lines(veriwild / SPLITS / "vehicle_info.txt")[1:]:
        item, camera = line.split(";")[:2]
        info[f"images/{item}.jpg"] = int(camera) - 1
    assert dict(zip(df["path"], df["camid"], strict=True)) == {p: info[p] for p in df["path"]}
    query = df[df["split"] == "query"]
    assert query["pid"].is_unique
    queried = [f"images/{item}.jpg" for item in lines(veriwild / SPLITS / "test_3000_query.txt")]
    assert sorted(query["path"]) == sorted(queried)
    sizes = [len(read_dataset(veriwild, "veriwild", s)) for s in ("small", "medium", "large")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[2]


def test_veriwild_keeps_an_image_listed_as_query_and_gallery_as_a_query_only(tmp_path):
    root = vehicles(tmp_path / "ds", "veriwild")
    gallery = root / SPLITS / "test_3000.txt"
    query = lines(root / SPLITS / "test_3000_query.txt")
    gallery.write_text("\n".join([*lines(gallery), *query]) + "\n")
    df = read_dataset(root, "veriwild", "small")
    assert df["path"].is_unique
    assert set(df.loc[df["split"] == "query", "path"]) == {f"images/{q}.jpg" for q in query}


@pytest.mark.parametrize("layout", ["vehicleid", "veriwild"])
def test_every_vehicle_test_set_passes_validation(layout, vehicleid, veriwild):
    root = {"vehicleid": vehicleid, "veriwild": veriwild}[layout]
    for test_set in READERS[layout].test_sets:
        df = build_manifest(root, layout, test_set=test_set)
        report = validate_manifest(df, root, min_side=16, max_side=4096)
        assert report.success, report.failures()


def _edit(path: Path, change) -> None:
    path.write_text("\n".join(change(lines(path))) + "\n")


VEHICLEID_BREAKAGES = {
    "missing-train-list": (
        lambda root: (root / SPLITS / "train_list.txt").unlink(),
        "missing list file",
    ),
    "three-fields": (
        lambda root: _edit(root / SPLITS / "train_list.txt", lambda ls: [ls[0] + " 7", *ls[1:]]),
        "train_list.txt:1: expected `<image name> <id>`",
    ),
    "id-not-a-number": (
        lambda root: _edit(
            root / SPLITS / "test_list_800.txt", lambda ls: [ls[0].split()[0] + " x1", *ls[1:]]
        ),
        "test_list_800.txt:1: expected `<image name> <id>`",
    ),
    "name-leaves-the-folder": (
        lambda root: _edit(root / SPLITS / "train_list.txt", lambda ls: ["../x 1", *ls[1:]]),
        "image name '../x' must be",
    ),
    "listed-twice": (
        lambda root: _edit(root / SPLITS / "test_list_800.txt", lambda ls: [*ls, ls[0]]),
        "is listed twice",
    ),
    "empty-test-list": (
        lambda root: (root / SPLITS / "test_list_800.txt").write_text("\n\n"),
        "lists no image",
    ),
    "id-in-train-and-test": (
        lambda root: _edit(
            root / SPLITS / "train_list.txt",
            lambda ls: [
                ls[0].split()[0] + " " + lines(root / SPLITS / "test_list_800.txt")[0].split()[1],
                *ls[1:],
            ],
        ),
        "must be disjoint",
    ),
    "image-missing": (
        lambda root: next((root / "image").iterdir()).unlink(),
        "do not exist",
    ),
    "no-vehicle-with-two-images": (
        lambda root: _edit(
            root / SPLITS / "test_list_800.txt",
            lambda ls: list({line.split()[1]: line for line in ls}.values()),
        ),
        "no identity has two images",
    ),
    "not-utf8": (
        lambda root: (root / SPLITS / "train_list.txt").write_bytes(b"\xff\xfe 1\n"),
        "cannot read list file",
    ),
}


VERIWILD_BREAKAGES = {
    "missing-query-list": (
        lambda root: (root / SPLITS / "test_3000_query.txt").unlink(),
        "missing list file",
    ),
    "missing-vehicle-info": (
        lambda root: (root / SPLITS / "vehicle_info.txt").unlink(),
        "vehicle_info.txt",
    ),
    "bad-item": (
        lambda root: _edit(
            root / SPLITS / "test_3000.txt", lambda ls: [ls[0].replace("/", "-"), *ls[1:]]
        ),
        "test_3000.txt:1: expected `<vehicle id>/<image id>`",
    ),
    "image-without-camera": (
        lambda root: _edit(root / SPLITS / "vehicle_info.txt", lambda ls: [ls[0], *ls[2:]]),
        "has no line in",
    ),
    "camera-not-a-number": (
        lambda root: _edit(
            root / SPLITS / "vehicle_info.txt",
            lambda ls: [ls[0], ls[1].replace(";0", ";x", 1), *ls[2:]],
        ),
        "vehicle_info.txt:2: expected",
    ),
    "camera-zero": (
        lambda root: _edit(
            root / SPLITS / "vehicle_info.txt",
            lambda ls: (
                [ls[0], ";".join([ls[1].split(";")[0], "000", *ls[1].split(";")[2:]])] + ls[2:]
            ),
        ),
        "cameras start at 1",
    ),
    "listed-twice": (
        lambda root: _edit(root / SPLITS / "test_3000_query.txt", lambda ls: [*ls, ls[0]]),
        "is listed twice",
    ),
    "image-missing": (
        lambda root: (
            root / "images" / f"{lines(root / SPLITS / 'train_list.txt')[0]}.jpg"
        ).unlink(),
        "do not exist",
    ),
}


BREAKAGES = {
    **{("vehicleid", name): damage for name, damage in VEHICLEID_BREAKAGES.items()},
    **{("veriwild", name): damage for name, damage in VERIWILD_BREAKAGES.items()},
}
SMALLEST = {"vehicleid": "800", "veriwild": "small"}


@pytest.mark.parametrize("fmt_breakage", list(BREAKAGES), ids="-".join)
def test_a_malformed_vehicle_dataset_is_named(fmt_breakage, tmp_path):
    fmt, _ = fmt_breakage
    root = vehicles(tmp_path / "ds", fmt)
    damage, message = BREAKAGES[fmt_breakage]
    damage(root)
    with pytest.raises(DatasetError, match=f"{fmt} dataset") as err:
        read_dataset(root, fmt, SMALLEST[fmt])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("fmt", "test_set", "message"),
    [
        ("vehicleid", "999", "has no test set '999'; choose one of 800, 1600, 2400"),
        ("veriwild", "800", "choose one of small, medium, large"),
        ("market1501", "small", "has one test set: data.test_set must be empty"),
    ],
)
def test_a_test_set_the_format_lacks_is_refused_by_the_config(fmt, test_set, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(format=fmt, test_set=test_set)


def test_the_vehicle_generator_is_byte_identical_for_one_spec(tmp_path):
    a, b = (vehicles(tmp_path / name, "veriwild", num_ids=6) for name in ("a", "b"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    pixels = np.asarray(Image.open(next((a / "images").rglob("*.jpg"))))
    assert pixels.shape == (32, 32, 3) and pixels.std() > 5

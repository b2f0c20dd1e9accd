"""The synthetic dataset generator: Market-1501 layout, determinism, protocol guarantees."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid_core.data.synth import SynthSpec, generate

NAME = re.compile(r"^(?P<pid>-1|\d{4})_c(?P<cam>[1-9])s1_\d{6}_\d{2}\.jpg$")
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
SMALL = SynthSpec(num_ids=8, num_cams=3, images_per_id=6, height=64, width=32, seed=7)


def _entries(root: Path, split: str) -> list[tuple[int, int, str]]:
    """(pid, camera, file name) of every image in one split folder."""
    out = []
    for path in sorted((root / split).iterdir()):
        match = NAME.match(path.name)
        assert match, f"bad file name {path.name} in {split}"
        out.append((int(match["pid"]), int(match["cam"]), path.name))
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _pixels(root: Path) -> np.ndarray:
    """Every pixel of every image under `root`, as (N, 3) floats."""
    images = [np.asarray(Image.open(p), dtype=np.float64) for p in sorted(root.rglob("*.jpg"))]
    return np.stack(images).reshape(-1, 3)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synth") / "day"
    return root, generate(root, SMALL)


def test_writes_market1501_layout_with_market_file_names(small):
    root, counts = small
    assert sorted(p.name for p in root.iterdir()) == sorted([*SPLITS, "synth.json"])
    for split in SPLITS:
        for _pid, cam, name in _entries(root, split):
            assert 1 <= cam <= SMALL.num_cams
            with Image.open(root / split / name) as img:
                assert img.format == "JPEG"
                assert img.mode == "RGB"
                assert img.size == (SMALL.width, SMALL.height)
    assert counts["train"] == len(_entries(root, "bounding_box_train"))
    assert counts["query"] == len(_entries(root, "query"))
    assert counts["gallery"] == len(_entries(root, "bounding_box_test"))
    assert counts["train"] + counts["query"] + counts["gallery"] - counts["junk"] - counts[
        "distractors"
    ] == (SMALL.num_ids * SMALL.images_per_id)


def test_metadata_file_records_spec_and_counts_with_sorted_keys(small):
    root, counts = small
    text = (root / "synth.json").read_text()
    meta = json.loads(text)
    assert meta["counts"] == counts
    assert meta["spec"]["seed"] == SMALL.seed and meta["spec"]["style"] == "day"
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"


def test_same_spec_gives_byte_identical_files(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    generate(again, SMALL)
    assert _files(again) == _files(root)


def test_different_seeds_give_different_images(small, tmp_path):
    root, _ = small
    other = tmp_path / "other"
    generate(other, replace(SMALL, seed=SMALL.seed + 1))
    a = {k: v for k, v in _files(root).items() if k.endswith(".jpg")}
    b = {k: v for k, v in _files(other).items() if k.endswith(".jpg")}
    assert set(a.values()).isdisjoint(b.values())


def test_train_and_test_identities_are_disjoint_and_start_at_one(small):
    root, counts = small
    train = {pid for pid, _, _ in _entries(root, "bounding_box_train")}
    query = {pid for pid, _, _ in _entries(root, "query")}
    gallery = {pid for pid, _, _ in _entries(root, "bounding_box_test")} - {-1, 0}
    assert train == set(range(1, counts["train_ids"] + 1))
    assert query == gallery
    assert len(query) == counts["test_ids"] == SMALL.num_ids - counts["train_ids"]
    assert train.isdisjoint(query)


def test_every_query_has_a_gallery_match_from_another_camera(small):
    root, _ = small
    gallery_cams = defaultdict(set)
    for pid, cam, _ in _entries(root, "bounding_box_test"):
        gallery_cams[pid].add(cam)
    query_cams = defaultdict(list)
    for pid, cam, _ in _entries(root, "query"):
        query_cams[pid].append(cam)
        assert gallery_cams[pid] - {cam}, f"query pid {pid} cam {cam} has no cross-camera match"
    # one query per (id, camera), two cameras per test id
    assert all(len(cams) == len(set(cams)) == 2 for cams in query_cams.values())


@pytest.mark.parametrize("num_cams", [2, 9])
def test_smallest_valid_spec_keeps_the_protocol_guarantees(tmp_path, num_cams):
    spec = SynthSpec(num_ids=4, num_cams=num_cams, images_per_id=4, height=32, width=16)
    counts = generate(tmp_path / "ds", spec)
    assert counts["train_ids"] == counts["test_ids"] == 2
    gallery = _entries(tmp_path / "ds", "bounding_box_test")
    for pid, cam, _ in _entries(tmp_path / "ds", "query"):
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam, _ in gallery)


def test_gallery_holds_junk_and_distractors_only_there(small):
    root, counts = small
    gallery = _entries(root, "bounding_box_test")
    junk = [name for pid, _, name in gallery if pid == -1]
    distractors = [name for pid, _, name in gallery if pid == 0]
    assert len(junk) == counts["junk"] >= 2
    assert len(distractors) == counts["distractors"] >= 2
    assert all(name.startswith("-1_c") for name in junk)
    assert all(name.startswith("0000_c") for name in distractors)
    for split in ("bounding_box_train", "query"):
        assert all(pid > 0 for pid, _, _ in _entries(root, split))


def test_file_names_are_unique_across_splits(small):
    root, _ = small
    names = [name for split in SPLITS for _, _, name in _entries(root, split)]
    assert len(names) == len(set(names))


def test_dusk_is_darker_bluer_and_flatter_than_day(small, tmp_path):
    root, _ = small
    dusk = tmp_path / "dusk"
    generate(dusk, replace(SMALL, style="dusk"))
    day_px, dusk_px = _pixels(root), _pixels(dusk)
    day_rgb, dusk_rgb = day_px.mean(axis=0), dusk_px.mean(axis=0)
    assert dusk_rgb.mean() < day_rgb.mean() - 30
    assert dusk_rgb[2] / dusk_rgb.mean() > day_rgb[2] / day_rgb.mean() + 0.05
    assert dusk_px.std() < 0.8 * day_px.std()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_cams", 1, "num_cams"),
        ("num_cams", 10, "num_cams"),
        ("images_per_id", 3, "images_per_id"),
        ("num_ids", 3, "num_ids"),
        ("height", 8, "height"),
        ("style", "night", "style"),
        ("seed", 1.5, "seed"),
    ],
)
def test_bad_spec_values_raise_a_clear_error(field, value, message):
    with pytest.raises(ValueError, match=rf"SynthSpec\.{message}"):
        SynthSpec(**{field: value})


def test_failure_midway_leaves_no_output(tmp_path, monkeypatch):
    saved = 0
    real_save = Image.Image.save

    def save_then_fail(self, *args, **kwargs):
        nonlocal saved
        saved += 1
        if saved > 5:
            raise OSError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    out = tmp_path / "ds"
    with pytest.raises(OSError, match="disk full"):
        generate(out, SMALL)
    assert saved == 6
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_a_previous_dataset_intact(small, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    generate(out, SMALL)
    before = _files(out)

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError):
        generate(out, replace(SMALL, seed=99))
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "ds"
    target.write_text("not a dataset")
    with pytest.raises(ValueError, match="not a directory"):
        generate(target, SMALL)
    assert target.read_text() == "not a dataset"

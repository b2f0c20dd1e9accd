"""Tiny fake datasets in each supported layout, made of small solid-colour JPEGs.

Every builder writes `n_train` train identities and `n_test` test identities (disjoint), each
test identity with one query image in camera 1 and one gallery image in each other camera, so
the result is a valid re-id dataset. Builders return the dataset root.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

SIZE = (24, 48)  # width, height: small, but above the default minimum side


def write_jpeg(path: Path, index: int, size: tuple[int, int] = SIZE) -> Path:
    """Write a solid-colour JPEG whose colour depends on `index` (so images differ)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((index * 67) % 256, (index * 131) % 256, (index * 29 + 90) % 256)
    Image.new("RGB", size, colour).save(path, format="JPEG", quality=90)
    return path


def _identities(n_train: int, n_test: int, first_pid: int = 1) -> tuple[range, range]:
    train = range(first_pid, first_pid + n_train)
    return train, range(train.stop, train.stop + n_test)


def _folder_dataset(
    root: Path,
    folders: tuple[str, str, str],
    name: Callable[[int, int, int], str],
    *,
    n_train: int,
    n_test: int,
    cameras: int,
) -> list[Path]:
    """Write train/query/gallery folders with names from `name(pid, camera, k)`."""
    train_ids, test_ids = _identities(n_train, n_test)
    train_dir, query_dir, gallery_dir = (root / f for f in folders)
    written: list[Path] = []
    index = 0
    for pid in train_ids:
        for camera in range(1, cameras + 1):
            written.append(write_jpeg(train_dir / name(pid, camera, 0), index))
            index += 1
    for pid in test_ids:
        written.append(write_jpeg(query_dir / name(pid, 1, 0), index))
        index += 1
        for camera in range(2, cameras + 1):
            written.append(write_jpeg(gallery_dir / name(pid, camera, 0), index))
            index += 1
    return written


def _market_name(pid: int, camera: int, k: int) -> str:
    return f"{pid:04d}_c{camera}s1_{1000 + 25 * k:06d}_{k:02d}.jpg"


def make_market_like(
    root: str | Path,
    *,
    n_train: int = 3,
    n_test: int = 3,
    cameras: int = 3,
    junk: int = 2,
    distractors: int = 2,
    extras: bool = True,
) -> Path:
    """Market-1501 layout, with `junk` pid -1 and `distractors` pid 0000 gallery images.

    `extras` adds non-image files (Thumbs.db, synth.json) that readers must ignore.
    """
    root = Path(root)
    folders = ("bounding_box_train", "query", "bounding_box_test")
    _folder_dataset(root, folders, _market_name, n_train=n_train, n_test=n_test, cameras=cameras)
    gallery = root / "bounding_box_test"
    for k in range(junk):
        write_jpeg(gallery / f"-1_c{1 + k % cameras}s1_{k:06d}_00.jpg", 200 + k)
    for k in range(distractors):
        write_jpeg(gallery / f"0000_c{1 + k % cameras}s1_{k:06d}_00.jpg", 300 + k)
    if extras:
        (gallery / "Thumbs.db").write_bytes(b"\x00\x01 not an image")
        (root / "synth.json").write_text("{}\n")
    return root


def make_duke_like(
    root: str | Path, *, n_train: int = 3, n_test: int = 3, cameras: int = 8
) -> Path:
    """DukeMTMC-reID layout: Market folders, names like 0001_c2_f0046182.jpg."""
    root = Path(root)

    def name(pid: int, camera: int, k: int) -> str:
        return f"{pid:04d}_c{camera}_f{46182 + 7 * pid + k:07d}.jpg"

    folders = ("bounding_box_train", "query", "bounding_box_test")
    _folder_dataset(root, folders, name, n_train=n_train, n_test=n_test, cameras=cameras)
    return root


def make_veri_like(
    root: str | Path, *, n_train: int = 3, n_test: int = 3, cameras: int = 3
) -> Path:
    """VeRi-776 layout: image_train/, image_query/, image_test/, 0001_c001_00016450_0.jpg."""
    root = Path(root)

    def name(pid: int, camera: int, k: int) -> str:
        return f"{pid:04d}_c{camera:03d}_{16450 + 5 * pid:08d}_{k}.jpg"

    folders = ("image_train", "image_query", "image_test")
    _folder_dataset(root, folders, name, n_train=n_train, n_test=n_test, cameras=cameras)
    return root


def make_vehicles_like(root: str | Path, layout: str) -> Path:
    """The vehicleid or veriwild layout, small, from reid_core.data.synth_vehicles."""
    from reid_core.data.synth_vehicles import VehicleSpec, generate_vehicles

    spec = VehicleSpec(layout=layout, num_ids=6, images_per_id=3, num_cams=2, size=32)
    generate_vehicles(Path(root) / layout, spec)
    return Path(root) / layout


PARTIAL_FOLDERS = {
    "partial_reid": ("partial_body_images", "whole_body_images"),
    "partial_ilids": ("query", "gallery"),
    "occluded_reid": ("occluded_body_images", "whole_body_images"),
}


def make_partial_like(root: str | Path, fmt: str, *, n_ids: int = 3, per_id: int = 2) -> Path:
    """A partial re-id test set: queries and whole-body gallery named <pid>_<nn>, pids from 1
    (Partial-REID's 001_01.jpg). Occluded-REID's as released: a folder per identity, TIFF."""
    root = Path(root) / fmt
    query_dir, gallery_dir = PARTIAL_FOLDERS[fmt]
    index = 0
    for pid in range(1, n_ids + 1):
        for folder in (query_dir, gallery_dir):
            for n in range(1, per_id + 1):
                index += 1
                if fmt == "occluded_reid":
                    path = root / folder / f"{pid:03d}" / f"{pid:03d}_{n:02d}.tif"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.new("RGB", SIZE, (index * 40 % 256, 90, 30)).save(path, format="TIFF")
                else:
                    write_jpeg(root / folder / f"{pid:03d}_{n:02d}.jpg", index)
    return root


def make_msmt_like(
    root: str | Path, *, n_train: int = 3, n_test: int = 3, cameras: int = 3, v2: bool = False
) -> Path:
    """MSMT17 layout: list_{train,val,query,gallery}.txt over train/ and test/ (V2: mask_*_v2/).

    Identities are numbered from 0 as in MSMT17; the last train identity goes to list_val.txt.
    """
    root = Path(root)
    train_dir = root / ("mask_train_v2" if v2 else "train")
    test_dir = root / ("mask_test_v2" if v2 else "test")
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    index = 0

    def add(list_name: str, image_dir: Path, pid: int, camera: int) -> None:
        nonlocal index
        relative = f"{pid:04d}/{pid:04d}_{index:03d}_{camera:02d}_0303morning_{index:04d}_0.jpg"
        write_jpeg(image_dir / relative, index)
        lists[list_name].append(f"{relative} {pid}")
        index += 1

    for pid in range(n_train):
        for camera in range(1, cameras + 1):
            add("val" if pid == n_train - 1 else "train", train_dir, pid, camera)
    for pid in range(n_test):
        add("query", test_dir, pid, 1)
        for camera in range(2, cameras + 1):
            add("gallery", test_dir, pid, camera)
    for list_name, lines in lists.items():
        (root / f"list_{list_name}.txt").write_text("".join(line + "\n" for line in lines))
    return root


def make_csv_like(root: str | Path, *, n_train: int = 3, n_test: int = 3, cameras: int = 3) -> Path:
    """Generic layout: images anywhere under the root plus manifest.csv (camid 0-based)."""
    root = Path(root)
    train_ids, test_ids = _identities(n_train, n_test)
    rows = ["path,pid,camid,split"]
    index = 0

    def add(split: str, pid: int, camid: int) -> None:
        nonlocal index
        relative = f"images/{split}/{pid}_{camid}_{index}.jpg"
        write_jpeg(root / relative, index)
        rows.append(f"{relative},{pid},{camid},{split}")
        index += 1

    for pid in train_ids:
        for camid in range(cameras):
            add("train", pid, camid)
    for pid in test_ids:
        add("query", pid, 0)
        for camid in range(1, cameras):
            add("gallery", pid, camid)
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root

"""Deterministic synthetic vehicle re-id datasets in the VehicleID and VERI-Wild layouts.

Why: the vehicle readers, the VehicleID protocol and the vehicle recipes need data that exists
without downloads. Each identity is a box-like vehicle: a body colour from a palette with
near-collisions (silver and white, black and navy), a type (sedan, SUV, van, truck, bus: its
proportions), a roof item (none, rack, light bar, box, antenna), an optional side stripe and a
wheel colour. Each image shows it from a viewpoint (front, rear, left or right side; VehicleID
has front and rear only, as the real one) through a camera with its own background, lighting,
blur and noise.

Layouts (what `reid_core.data.vehicle_readers` reads):
- vehicleid: image/<7 digits>.jpg; train_test_split/train_list.txt and test_list_{800,1600,2400}
  .txt, lines `<name> <vehicle id>`. The three test lists are nested: the first third, two
  thirds and all of the test vehicles (the file names are the layout's, not the counts).
- veriwild: images/<vid>/<image>.jpg; train_test_split/train_list.txt, test_{3000,5000,10000}
  .txt (gallery) and test_<N>_query.txt (one query per vehicle), lines `<vid>/<image>`, nested
  likewise, and vehicle_info.txt (`vid/image;camera;time;model;type;colour`, 1-based cameras).

Every image is drawn from its own numpy Generator seeded by (seed, vehicle, image) and saved by
Pillow with fixed JPEG settings, so the same spec gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reid_core.atomic import atomic_output

LAYOUTS = ("vehicleid", "veriwild")
JPEG_QUALITY = 90
TYPES = ("sedan", "suv", "van", "truck", "bus")
ROOF_ITEMS = ("none", "rack", "light", "box", "antenna")
VIEWS = ("front", "rear", "left", "right")
_TEST_LISTS = {"vehicleid": ("800", "1600", "2400"), "veriwild": ("3000", "5000", "10000")}
# (length, body height, cabin height, cabin start, cabin end) as fractions of the image side
_SHAPES = {
    "sedan": (0.80, 0.16, 0.14, 0.28, 0.72),
    "suv": (0.78, 0.20, 0.18, 0.22, 0.82),
    "van": (0.80, 0.22, 0.22, 0.10, 0.95),
    "truck": (0.86, 0.20, 0.20, 0.05, 0.32),
    "bus": (0.92, 0.26, 0.24, 0.03, 0.97),
}
_COLOURS = np.array(  # near-collisions on purpose: the model must look at more than colour
    [
        (235, 235, 235),  # white
        (200, 202, 206),  # silver
        (120, 122, 126),  # grey
        (25, 25, 28),  # black
        (30, 35, 70),  # navy
        (170, 30, 30),  # red
        (110, 25, 30),  # dark red
        (40, 80, 160),  # blue
        (40, 110, 60),  # green
        (220, 190, 40),  # yellow
        (120, 85, 50),  # brown
        (210, 195, 160),  # beige
    ],
    dtype=np.float32,
)
_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_LAYOUT = 11, 12, 13, 14


@dataclass(frozen=True)
class VehicleSpec:
    """What to generate; invalid values raise ValueError at construction."""

    layout: str = "vehicleid"  # vehicleid or veriwild
    num_ids: int = 60  # half (rounded down) train, the rest test (at least 3)
    num_cams: int = 4  # veriwild's cameras (VehicleID records none; its images vary anyway)
    images_per_id: int = 6
    size: int = 128  # square images, as vehicle recipes see them
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"VehicleSpec.layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("num_ids", "num_cams", "images_per_id", "size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"VehicleSpec.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not 5 <= self.num_ids <= 99_999:
            raise ValueError(
                "VehicleSpec.num_ids must be in 5..99999 (at least 2 train and 3 test vehicles, "
                f"one per nested test list), got {self.num_ids}"
            )
        if not 2 <= self.num_cams <= 174:
            raise ValueError(f"VehicleSpec.num_cams must be in 2..174, got {self.num_cams}")
        if not 3 <= self.images_per_id <= 1000:
            raise ValueError(
                "VehicleSpec.images_per_id must be in 3..1000 (a query plus gallery images), "
                f"got {self.images_per_id}"
            )
        if not 32 <= self.size <= 1024:
            raise ValueError(f"VehicleSpec.size must be in 32..1024, got {self.size}")

    @property
    def num_train_ids(self) -> int:
        return max(2, self.num_ids // 2)


@dataclass(frozen=True)
class _Vehicle:
    colour: np.ndarray
    kind: str
    roof: str
    stripe: np.ndarray | None
    wheel: np.ndarray


@dataclass(frozen=True)
class _Camera:
    background: np.ndarray
    ground: np.ndarray
    gain: float
    blur: float
    noise: float


@dataclass(frozen=True)
class _Image:
    vid: int
    index: int
    cam: int  # 0-based
    view: str
    name: str  # path relative to the dataset root


def _rng(spec: VehicleSpec, tag: int, *keys: int) -> np.random.Generator:
    seed = int(spec.seed)
    return np.random.default_rng([abs(seed), int(seed < 0), tag, *(int(k) for k in keys)])


def _vehicle(rng: np.random.Generator) -> _Vehicle:
    colour = _COLOURS[rng.integers(len(_COLOURS))] * rng.uniform(0.92, 1.08, 3)
    stripe = _COLOURS[rng.integers(len(_COLOURS))] if rng.random() < 0.3 else None
    return _Vehicle(
        colour=np.clip(colour, 0, 255).astype(np.float32),
        kind=TYPES[int(rng.choice(len(TYPES), p=[0.4, 0.25, 0.15, 0.12, 0.08]))],
        roof=ROOF_ITEMS[int(rng.choice(len(ROOF_ITEMS), p=[0.5, 0.15, 0.1, 0.1, 0.15]))],
        stripe=stripe,
        wheel=np.array((20, 20, 22) if rng.random() < 0.7 else (150, 150, 155), np.float32),
    )


def _camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        background=rng.uniform(60, 200, 3).astype(np.float32),
        ground=rng.uniform(50, 120, 1).repeat(3).astype(np.float32),
        gain=float(rng.uniform(0.7, 1.2)),
        blur=float(rng.uniform(0.0, 1.2)),
        noise=float(rng.uniform(2, 9)),
    )


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(colour, 0, 255))
    return r, g, b


def _draw(size: int, who: _Vehicle, cam: _Camera, view: str, rng: np.random.Generator) -> Image:
    """One image: scene, vehicle from `view` (jittered in scale and position), camera response."""
    image = Image.new("RGB", (size, size), _rgb(cam.background * rng.uniform(0.9, 1.1)))
    draw = ImageDraw.Draw(image)
    horizon = size * rng.uniform(0.55, 0.7)
    draw.rectangle((0, horizon, size, size), fill=_rgb(cam.ground))
    length, body_h, cabin_h, cab0, cab1 = _SHAPES[who.kind]
    scale = size * rng.uniform(0.85, 1.0)
    side = view in ("left", "right")
    width = length * scale if side else 0.62 * scale * (1.15 if who.kind == "bus" else 1.0)
    cx = size / 2 + size * rng.uniform(-0.05, 0.05)
    bottom = size * rng.uniform(0.78, 0.9)
    x0, x1 = cx - width / 2, cx + width / 2
    body_top = bottom - body_h * scale
    shade = who.colour * rng.uniform(0.9, 1.1)
    draw.rectangle((x0, body_top, x1, bottom), fill=_rgb(shade))
    if side:  # cabin over part of the length, windows, wheels, stripe
        c0, c1 = x0 + cab0 * width, x0 + cab1 * width
    else:  # cabin over the whole width, slightly narrower
        c0, c1 = x0 + 0.08 * width, x1 - 0.08 * width
    cabin_top = body_top - cabin_h * scale
    draw.rectangle((c0, cabin_top, c1, body_top), fill=_rgb(shade * 0.95))
    glass = (55, 65, 80) if view != "rear" else (45, 50, 60)
    inset = 0.15 * cabin_h * scale
    draw.rectangle((c0 + inset, cabin_top + inset, c1 - inset, body_top - inset / 2), fill=glass)
    if who.stripe is not None:
        mid = (body_top + bottom) / 2
        draw.rectangle((x0, mid - 0.02 * scale, x1, mid + 0.02 * scale), fill=_rgb(who.stripe))
    r = 0.07 * scale
    if side:
        for wx in (x0 + 0.18 * width, x1 - 0.18 * width):
            draw.ellipse((wx - r, bottom - r, wx + r, bottom + r), fill=_rgb(who.wheel))
    else:
        lamp = (250, 250, 225) if view == "front" else (200, 30, 30)
        lw, lh = 0.14 * width, 0.05 * scale
        ly = body_top + 0.3 * body_h * scale
        draw.rectangle((x0 + 0.04 * width, ly, x0 + 0.04 * width + lw, ly + lh), fill=lamp)
        draw.rectangle((x1 - 0.04 * width - lw, ly, x1 - 0.04 * width, ly + lh), fill=lamp)
        if view == "front":
            gx0, gx1 = cx - 0.18 * width, cx + 0.18 * width
            draw.rectangle((gx0, ly, gx1, ly + 1.5 * lh), fill=(35, 35, 38))
        for wx in (x0 + 0.1 * width, x1 - 0.1 * width):
            draw.rectangle(
                (wx - r * 0.6, bottom - r * 0.3, wx + r * 0.6, bottom + r), fill=(20, 20, 22)
            )
    _roof(draw, who.roof, c0, c1, cabin_top, scale)
    if view == "right":  # the left side seen in a mirror: same vehicle, the other flank
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, dtype=np.float32) * (cam.gain * rng.uniform(0.93, 1.07))
    image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")
    radius = (cam.blur + rng.uniform(0, 0.5)) * size / 128
    if radius > 0.15:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    out = np.asarray(image, dtype=np.float32)
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(cam.noise)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


def _roof(draw: ImageDraw.ImageDraw, item: str, c0: float, c1: float, top: float, s: float) -> None:
    mid, span = (c0 + c1) / 2, c1 - c0
    if item == "rack":
        draw.rectangle((c0 + 0.1 * span, top - 0.025 * s, c1 - 0.1 * span, top), fill=(40, 40, 40))
    elif item == "light":
        draw.rectangle(
            (mid - 0.15 * span, top - 0.03 * s, mid + 0.15 * span, top), fill=(230, 120, 20)
        )
    elif item == "box":
        draw.rectangle(
            (c0 + 0.2 * span, top - 0.06 * s, c1 - 0.2 * span, top), fill=(240, 240, 240)
        )
    elif item == "antenna":
        draw.line(
            (c1 - 0.1 * span, top, c1 - 0.05 * span, top - 0.1 * s), fill=(15, 15, 15), width=2
        )


def _plan(spec: VehicleSpec) -> list[_Image]:
    """Every image: vehicle, index, camera, view and file name."""
    rng = _rng(spec, _TAG_LAYOUT)
    views = VIEWS[:2] if spec.layout == "vehicleid" else VIEWS
    plan: list[_Image] = []
    counter = 0
    for vid in range(1, spec.num_ids + 1):
        cams = rng.permutation(spec.num_cams)
        for i in range(spec.images_per_id):
            # images 0 and 1 come from two cameras: the query always has a cross-camera match
            cam = int(cams[i]) if i < 2 else int(rng.integers(spec.num_cams))
            view = views[int(rng.integers(len(views)))]
            counter += 1
            if spec.layout == "vehicleid":
                name = f"image/{counter:07d}.jpg"
            else:
                name = f"images/{vid:05d}/{counter:06d}.jpg"
            plan.append(_Image(vid, i, cam, view, name))
    return plan


def _item(image: _Image) -> str:
    """How the layout's lists name an image: VehicleID by file stem, VERI-Wild by vid/stem."""
    stem = Path(image.name).stem
    return stem if image.name.startswith("image/") else f"{image.vid:05d}/{stem}"


def _lists(spec: VehicleSpec, plan: list[_Image]) -> dict[str, list[str]]:
    """The layout's list files (relative to train_test_split/) and their lines."""
    train = [im for im in plan if im.vid <= spec.num_train_ids]
    test_ids = sorted({im.vid for im in plan} - {im.vid for im in train})
    n = len(test_ids)
    nested = [set(test_ids[: max(1, round(n * k / 3))]) for k in (1, 2, 3)]
    files: dict[str, list[str]] = {}
    if spec.layout == "vehicleid":
        files["train_list.txt"] = [f"{_item(im)} {im.vid}" for im in train]
        for size, ids in zip(_TEST_LISTS["vehicleid"], nested, strict=True):
            files[f"test_list_{size}.txt"] = [
                f"{_item(im)} {im.vid}" for im in plan if im.vid in ids
            ]
        return files
    files["train_list.txt"] = [_item(im) for im in train]
    for size, ids in zip(_TEST_LISTS["veriwild"], nested, strict=True):
        chosen = [im for im in plan if im.vid in ids]
        files[f"test_{size}_query.txt"] = [_item(im) for im in chosen if im.index == 0]
        files[f"test_{size}.txt"] = [_item(im) for im in chosen if im.index > 0]
    info = ["id/image;Camera ID;Time;Model;Type;Color"]
    for im in plan:
        info.append(f"{_item(im)};{im.cam + 1:03d};2026-01-01 00:00:{im.index % 60:02d};0;0;0")
    files["vehicle_info.txt"] = info
    return files


def generate_vehicles(out: Path, spec: VehicleSpec) -> dict[str, int]:
    """Write the dataset for `spec` into `out` (replaced atomically) and return its counts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthetic dataset output {out} exists and is not a directory")
    plan = _plan(spec)
    cams = [_camera(_rng(spec, _TAG_CAMERA, c)) for c in range(spec.num_cams)]
    with atomic_output(out, directory=True) as tmp:
        vehicles: dict[int, _Vehicle] = {}
        for im in plan:
            if im.vid not in vehicles:
                vehicles[im.vid] = _vehicle(_rng(spec, _TAG_IDENTITY, im.vid))
            rng = _rng(spec, _TAG_IMAGE, im.vid, im.index)
            dest = tmp / im.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _draw(spec.size, vehicles[im.vid], cams[im.cam], im.view, rng).save(
                dest, "JPEG", quality=JPEG_QUALITY
            )
        (tmp / "train_test_split").mkdir()
        for name, lines in _lists(spec, plan).items():
            (tmp / "train_test_split" / name).write_text("\n".join(lines) + "\n")
        counts = {
            "images": len(plan),
            "train_ids": spec.num_train_ids,
            "test_ids": spec.num_ids - spec.num_train_ids,
        }
        meta = {
            "counts": counts,
            "format": spec.layout,
            "generator": "reid_core.data.synth_vehicles",
            "spec": asdict(spec),
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return counts

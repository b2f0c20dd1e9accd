"""Deterministic synthetic re-identification dataset in the Market-1501 layout.

Why: every stage of the pipeline needs a dataset that exists without downloads, is small enough
for tests, and is hard enough that a model has to learn something. Each identity is a drawn
person (clothing colours from a palette with near-collisions, patterns, accessories, body
shape); each camera has its own nuisance profile (lighting, colour cast, background clutter,
blur, resolution, noise, framing) on top of per-image jitter (pose, viewpoint, flip,
occlusion). `style="dusk"` renders a different population of people under a shifted domain
(darker, colour cast, low contrast, noisier), the target domain for unsupervised adaptation.
`partial="crop"` or `"occlude"` makes every query partial, as in Partial-REID and Occluded-REID:
a crop of the box (the upper body, or a horizontal band) or a scene object over a third to a
half of it; the gallery stays whole.

Every image is drawn from its own numpy Generator seeded by (seed, style, pid, image index) and
saved by Pillow with fixed JPEG settings, so the same spec gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from reid_core.atomic import atomic_output

__all__ = ["SynthSpec", "generate"]

TRAIN_DIR = "bounding_box_train"
QUERY_DIR = "query"
GALLERY_DIR = "bounding_box_test"
JPEG_QUALITY = 90

_STYLES = {"day": 0, "dusk": 1}
# Stream tags keep the random streams of identities, cameras, images and the layout apart.
_TAG_IDENTITY, _TAG_CAMERA, _TAG_IMAGE, _TAG_LAYOUT, _TAG_DISTRACTOR = 1, 2, 3, 4, 5
_TAG_PARTIAL = 6
PARTIAL_MODES = ("none", "crop", "occlude")
_JUNK_PID, _DISTRACTOR_PID = -1, 0
_MAX_IMAGES = 150_000  # keeps 6-digit frame numbers and 4-digit pids in range


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; invalid values raise ValueError at construction."""

    num_ids: int = 120  # half (rounded down, at least 2) train, the rest test
    num_cams: int = 4  # 2..9
    images_per_id: int = 10  # spread over cameras; each id appears in >= 2 cameras
    height: int = 128
    width: int = 64
    seed: int = 0
    style: str = "day"  # "day" (source domain) or "dusk" (target domain)
    partial: str = "none"  # "crop" or "occlude": partial queries (see the module docstring)

    def __post_init__(self) -> None:
        for name in ("num_ids", "num_cams", "images_per_id", "height", "width", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"SynthSpec.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))  # numpy ints would break synth.json
        if self.num_ids < 4:
            raise ValueError(
                f"SynthSpec.num_ids must be >= 4 (at least 2 train and 2 test identities), "
                f"got {self.num_ids}"
            )
        if self.num_ids > 9999:
            raise ValueError(
                f"SynthSpec.num_ids must be <= 9999 (4-digit pids), got {self.num_ids}"
            )
        if not 2 <= self.num_cams <= 9:
            raise ValueError(f"SynthSpec.num_cams must be in 2..9, got {self.num_cams}")
        if self.images_per_id < 4:
            raise ValueError(
                "SynthSpec.images_per_id must be >= 4 (2 queries in different cameras plus a "
                f"cross-camera gallery match for each), got {self.images_per_id}"
            )
        if self.num_ids * self.images_per_id > _MAX_IMAGES:
            raise ValueError(
                f"SynthSpec.num_ids * images_per_id must be <= {_MAX_IMAGES}, "
                f"got {self.num_ids * self.images_per_id}"
            )
        if self.height < 32 or self.width < 16:
            raise ValueError(
                f"SynthSpec.height must be >= 32 and width >= 16, got {self.height}x{self.width}"
            )
        if self.height > 1024 or self.width > 1024:
            raise ValueError(
                f"SynthSpec.height and width must be <= 1024, got {self.height}x{self.width}"
            )
        if self.style not in _STYLES:
            raise ValueError(
                f"SynthSpec.style must be one of {sorted(_STYLES)}, got {self.style!r}"
            )

        if self.partial not in PARTIAL_MODES:
            raise ValueError(
                f"SynthSpec.partial must be one of {PARTIAL_MODES}, got {self.partial!r}"
            )

    @property
    def num_train_ids(self) -> int:
        return max(2, self.num_ids // 2)


def generate(out: Path, spec: SynthSpec) -> dict[str, int]:
    """Write the dataset for `spec` into `out` (replaced atomically) and return its counts.

    Counts: `train`, `query`, `gallery` (every file in bounding_box_test, junk and distractors
    included), `junk` (pid -1), `distractors` (pid 0), `train_ids`, `test_ids`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthetic dataset output {out} exists and is not a directory")
    records = _layout(spec)
    with atomic_output(out, directory=True) as tmp:
        for sub in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR):
            (tmp / sub).mkdir()
        cams = [_camera(spec, c) for c in range(spec.num_cams)]
        grid = _Grid(spec.height, spec.width)
        identities: dict[int, _Identity] = {}
        for rec in records:
            if rec.kind == "id":
                if rec.pid not in identities:
                    identities[rec.pid] = _identity(_rng(spec, _TAG_IDENTITY, rec.pid))
                ident: _Identity | None = identities[rec.pid]
            elif rec.kind == "distractor":
                ident = _identity(_rng(spec, _TAG_DISTRACTOR, rec.index))
            else:
                ident = None
            rng = _rng(spec, _TAG_IMAGE, rec.pid + 1, rec.index)
            pixels = _render(grid, ident, cams[rec.cam], rng)
            if spec.partial != "none" and rec.folder == QUERY_DIR:
                partial_rng = _rng(spec, _TAG_PARTIAL, rec.pid + 1, rec.index)
                pixels = _partial(pixels, spec.partial, cams[rec.cam], partial_rng)
            dest = tmp / rec.folder / rec.name
            Image.fromarray(pixels, "RGB").save(dest, "JPEG", quality=JPEG_QUALITY)
        counts = _counts(spec, records)
        meta = {
            "counts": counts,
            "format": "market1501",
            "generator": "reid_core.data.synth",
            "spec": asdict(spec),
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return counts


# --------------------------------------------------------------------------------------------
# layout: which images exist, their split, camera and file name


@dataclass(frozen=True)
class _Record:
    pid: int
    index: int  # image index within the pid (or within junk/distractors)
    cam: int  # 0-based
    folder: str
    kind: str  # "id", "distractor", "junk"
    name: str = ""


def _rng(spec: SynthSpec, tag: int, *keys: int) -> np.random.Generator:
    """A Generator for one stream; the style offsets the seed so each domain has its own people."""
    seed = int(spec.seed)
    entropy = [abs(seed), int(seed < 0), _STYLES[spec.style], tag, *(int(k) for k in keys)]
    return np.random.default_rng(entropy)


def _id_cameras(rng: np.random.Generator, num_cams: int, n: int) -> list[int]:
    """Cameras of an identity's n images: k >= 2 cameras, the first max(k, 4) images cycle them.

    Queries are images 0 and 1 (cameras perm[0], perm[1]); the cycle guarantees that images 2 and
    3 (gallery) give each query a match from another camera.
    """
    k = int(rng.integers(2, min(num_cams, n) + 1))
    perm = [int(c) for c in rng.permutation(num_cams)[:k]]
    head = max(k, 4)
    cams = [perm[i % k] for i in range(head)]
    cams += [perm[int(j)] for j in rng.integers(0, k, size=n - head)]
    return cams


def _layout(spec: SynthSpec) -> list[_Record]:
    rng = _rng(spec, _TAG_LAYOUT)
    n_train = spec.num_train_ids
    n_test = spec.num_ids - n_train
    recs: list[_Record] = []
    for pid in range(1, spec.num_ids + 1):
        cams = _id_cameras(rng, spec.num_cams, spec.images_per_id)
        for i, cam in enumerate(cams):
            folder = TRAIN_DIR if pid <= n_train else QUERY_DIR if i < 2 else GALLERY_DIR
            recs.append(_Record(pid, i, cam, folder, "id"))
    n_junk = max(2, n_test // 4)
    n_distract = max(2, n_test // 3)
    for i in range(n_junk):
        recs.append(_Record(_JUNK_PID, i, int(rng.integers(spec.num_cams)), GALLERY_DIR, "junk"))
    for i in range(n_distract):
        cam = int(rng.integers(spec.num_cams))
        recs.append(_Record(_DISTRACTOR_PID, i, cam, GALLERY_DIR, "distractor"))
    # Frame numbers: one clock per camera, images visited in a shuffled order so identities
    # interleave in time as in a real recording; unique frames make file names unique.
    clock = [0] * spec.num_cams
    named: list[_Record | None] = [None] * len(recs)
    for j in rng.permutation(len(recs)):
        rec = recs[int(j)]
        clock[rec.cam] += int(rng.integers(1, 6))
        box = int(rng.integers(0, 4))
        pid = "-1" if rec.pid == _JUNK_PID else f"{rec.pid:04d}"
        name = f"{pid}_c{rec.cam + 1}s1_{clock[rec.cam]:06d}_{box:02d}.jpg"
        named[int(j)] = _Record(rec.pid, rec.index, rec.cam, rec.folder, rec.kind, name)
    return [r for r in named if r is not None]


def _counts(spec: SynthSpec, records: list[_Record]) -> dict[str, int]:
    folders = [r.folder for r in records]
    return {
        "train": folders.count(TRAIN_DIR),
        "query": folders.count(QUERY_DIR),
        "gallery": folders.count(GALLERY_DIR),
        "junk": sum(r.kind == "junk" for r in records),
        "distractors": sum(r.kind == "distractor" for r in records),
        "train_ids": spec.num_train_ids,
        "test_ids": spec.num_ids - spec.num_train_ids,
    }


# --------------------------------------------------------------------------------------------
# identities


def _rgb(*values: int) -> tuple[float, float, float]:
    return (values[0] / 255, values[1] / 255, values[2] / 255)


# Clothing colours with deliberate near-collisions (black/charcoal, navy/denim/blue,
# red/dark red/maroon, khaki/beige, grey/light grey, olive/green) and weights favouring the
# dark, plain colours that dominate real pedestrian datasets.
_CLOTHES = np.array(
    [
        _rgb(22, 22, 26),  # black
        _rgb(48, 48, 54),  # charcoal
        _rgb(118, 118, 122),  # grey
        _rgb(170, 170, 172),  # light grey
        _rgb(232, 232, 228),  # white
        _rgb(26, 34, 84),  # navy
        _rgb(70, 92, 140),  # denim
        _rgb(52, 92, 176),  # blue
        _rgb(140, 178, 222),  # light blue
        _rgb(188, 34, 36),  # red
        _rgb(122, 24, 32),  # dark red
        _rgb(228, 140, 160),  # pink
        _rgb(226, 126, 40),  # orange
        _rgb(232, 206, 70),  # yellow
        _rgb(50, 124, 62),  # green
        _rgb(104, 112, 52),  # olive
        _rgb(184, 164, 116),  # khaki
        _rgb(206, 190, 160),  # beige
        _rgb(104, 70, 42),  # brown
        _rgb(104, 56, 138),  # purple
        _rgb(38, 126, 130),  # teal
    ],
    dtype=np.float32,
)
_UPPER_W = np.array([5, 3, 4, 4, 5, 4, 3, 4, 3, 4, 3, 3, 3, 3, 3, 3, 2, 3, 3, 3, 3], float)
_LOWER_W = np.array([14, 6, 5, 2, 2, 6, 9, 3, 1, 1, 1, 1, 0, 0, 1, 2, 4, 3, 4, 0, 0], float)
_SKIN = np.array(
    [_rgb(236, 200, 170), _rgb(214, 168, 130), _rgb(176, 124, 88), _rgb(120, 80, 54)], np.float32
)
_HAIR = np.array(
    [
        _rgb(20, 16, 14),
        _rgb(62, 40, 24),
        _rgb(120, 84, 44),
        _rgb(196, 160, 96),
        _rgb(150, 150, 150),
    ],
    np.float32,
)
_PATTERNS = ("solid", "hstripes", "vstripes", "checks")


@dataclass(frozen=True)
class _Identity:
    upper: np.ndarray
    upper_pattern: str
    upper_pattern_rgb: np.ndarray
    upper_freq: float  # pattern periods per person height
    lower: np.ndarray
    lower_kind: str  # trousers, shorts, skirt
    lower_pattern: str
    lower_pattern_rgb: np.ndarray
    long_sleeves: bool
    shoes: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    height: float
    width: float
    head: float
    leg_sep: float
    backpack: np.ndarray | None
    bag: np.ndarray | None
    bag_side: int
    hat: np.ndarray | None


def _pick(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    colour = _CLOTHES[int(rng.choice(len(weights), p=weights / weights.sum()))]
    return np.clip(colour + rng.normal(0, 0.035, 3), 0, 1).astype(np.float32)


def _identity(rng: np.random.Generator) -> _Identity:
    """Draw one person's appearance (all draws happen, used or not, to keep streams stable)."""
    upper = _pick(rng, _UPPER_W)
    upper_pattern = _PATTERNS[int(rng.choice(4, p=[0.55, 0.2, 0.1, 0.15]))]
    upper_pattern_rgb = _pick(rng, _UPPER_W)
    upper_freq = float(rng.uniform(10, 26))
    lower = _pick(rng, _LOWER_W)
    lower_kind = ("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.7, 0.18, 0.12]))]
    lower_pattern = _PATTERNS[int(rng.choice(4, p=[0.85, 0.0, 0.05, 0.1]))]
    lower_pattern_rgb = _pick(rng, _LOWER_W)
    long_sleeves = bool(rng.random() < 0.55)
    shoes = _CLOTHES[int(rng.choice([0, 1, 4, 18, 2]))] * rng.uniform(0.8, 1.1)
    skin = np.clip(_SKIN[int(rng.integers(len(_SKIN)))] + rng.normal(0, 0.03, 3), 0, 1)
    hair = _HAIR[int(rng.choice(len(_HAIR), p=[0.45, 0.25, 0.12, 0.1, 0.08]))]
    long_hair = bool(rng.random() < 0.35)
    height = float(rng.uniform(0.88, 1.0))
    width = float(rng.uniform(0.82, 1.18))
    head = float(rng.uniform(0.9, 1.12))
    leg_sep = float(rng.uniform(0.45, 1.0))
    backpack_rgb = _pick(rng, _UPPER_W)
    bag_rgb = _pick(rng, _UPPER_W)
    hat_rgb = _pick(rng, _UPPER_W)
    acc = rng.random(3)
    return _Identity(
        upper=upper,
        upper_pattern=upper_pattern,
        upper_pattern_rgb=upper_pattern_rgb,
        upper_freq=upper_freq,
        lower=lower,
        lower_kind=lower_kind,
        lower_pattern=lower_pattern,
        lower_pattern_rgb=lower_pattern_rgb,
        long_sleeves=long_sleeves,
        shoes=np.clip(shoes, 0, 1).astype(np.float32),
        skin=skin.astype(np.float32),
        hair=hair,
        long_hair=long_hair,
        height=height,
        width=width,
        head=head,
        leg_sep=leg_sep,
        backpack=backpack_rgb if acc[0] < 0.3 else None,
        bag=bag_rgb if acc[1] < 0.25 else None,
        bag_side=1 if rng.random() < 0.5 else -1,
        hat=hat_rgb if acc[2] < 0.2 else None,
    )


# --------------------------------------------------------------------------------------------
# cameras


@dataclass(frozen=True)
class _Camera:
    gain: float
    cast: np.ndarray  # per-channel multipliers
    contrast: float
    gamma: float
    blur: float  # Gaussian radius in pixels at 128 px height
    resolution: float  # fraction of the box resolution the sensor really has
    noise: float
    scale: float  # person height / box height
    horizon: float  # fraction of the height where wall meets ground
    palette: np.ndarray  # (4, 3): wall, ground, clutter, clutter
    pool: np.ndarray  # (P, 4, 3): the domain's palettes; each box mixes one into `palette`
    light: float  # shading direction, -1..1
    occlusion: float  # probability of an occluder


_DAY_PALETTES = np.array(
    [
        [_rgb(178, 170, 156), _rgb(120, 118, 112), _rgb(60, 90, 60), _rgb(200, 190, 170)],
        [_rgb(150, 160, 172), _rgb(90, 92, 96), _rgb(170, 60, 50), _rgb(220, 220, 210)],
        [_rgb(196, 180, 140), _rgb(150, 130, 100), _rgb(80, 110, 150), _rgb(40, 40, 44)],
        [_rgb(120, 140, 110), _rgb(110, 110, 104), _rgb(190, 170, 60), _rgb(160, 150, 140)],
        [_rgb(210, 205, 200), _rgb(140, 136, 130), _rgb(90, 60, 110), _rgb(70, 130, 140)],
        [_rgb(130, 110, 96), _rgb(96, 90, 84), _rgb(200, 140, 80), _rgb(180, 180, 190)],
    ],
    dtype=np.float32,
)
_DUSK_PALETTES = np.array(
    [
        [_rgb(70, 78, 100), _rgb(50, 52, 60), _rgb(150, 120, 60), _rgb(30, 30, 40)],
        [_rgb(96, 84, 90), _rgb(60, 56, 58), _rgb(40, 70, 110), _rgb(180, 150, 90)],
        [_rgb(60, 70, 80), _rgb(44, 48, 52), _rgb(120, 60, 60), _rgb(200, 190, 150)],
        [_rgb(90, 90, 110), _rgb(70, 66, 70), _rgb(50, 90, 80), _rgb(120, 110, 130)],
    ],
    dtype=np.float32,
)


def _camera(spec: SynthSpec, cam: int) -> _Camera:
    rng = _rng(spec, _TAG_CAMERA, cam)
    dusk = spec.style == "dusk"
    palettes = _DUSK_PALETTES if dusk else _DAY_PALETTES
    palette = palettes[int(rng.integers(len(palettes)))] * rng.uniform(0.92, 1.08, (4, 1))
    palette = np.clip(palette + rng.normal(0, 0.05, (4, 3)), 0, 1).astype(np.float32)
    cast = rng.uniform(0.96, 1.04, 3)
    gain = float(rng.uniform(0.92, 1.08))
    contrast = float(rng.uniform(0.92, 1.06))
    noise = float(rng.uniform(0.01, 0.035))
    if dusk:
        # blue-hour ambient, some orange street lamp light: darker, bluer, flatter, noisier
        w = float(rng.uniform(0.05, 0.5))
        tint = w * np.array([1.25, 0.95, 0.65]) + (1 - w) * np.array([0.75, 0.9, 1.25])
        cast = cast * tint
        gain *= float(rng.uniform(0.65, 0.8))
        contrast *= 0.75
        noise += 0.025
    return _Camera(
        gain=gain,
        cast=cast.astype(np.float32),
        contrast=contrast,
        gamma=float(rng.uniform(0.94, 1.06)),
        blur=float(rng.uniform(0.0, 1.0)),
        resolution=float(rng.uniform(0.45, 1.0)),
        noise=noise,
        scale=float(rng.uniform(0.84, 0.94)),
        horizon=float(rng.uniform(0.35, 0.7)),
        palette=palette,
        pool=palettes,
        light=float(rng.uniform(-1, 1)),
        occlusion=float(rng.uniform(0.08, 0.25)),
    )


# --------------------------------------------------------------------------------------------
# rendering (vectorised over pixels; loops only over a handful of shapes)


class _Grid:
    """Pixel-centre coordinates as a column (H, 1) and a row (1, W), broadcast on use."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
        self.xx = np.arange(width, dtype=np.float32)[None, :] + 0.5

    def window(self, y0: float, x0: float, y1: float, x1: float) -> tuple[slice, slice]:
        """The pixel window covering a shape's bounding box (plus the soft edge)."""
        ya, yb = max(0, math.floor(y0) - 1), min(self.h, math.ceil(y1) + 1)
        xa, xb = max(0, math.floor(x0) - 1), min(self.w, math.ceil(x1) + 1)
        return slice(ya, max(ya, yb)), slice(xa, max(xa, xb))


# A shape is its window and an anti-aliased coverage mask in [0, 1] over that window.
_Shape = tuple[slice, slice, np.ndarray]


def _ellipse(g: _Grid, cy: float, cx: float, ry: float, rx: float) -> _Shape:
    sy, sx = g.window(cy - ry, cx - rx, cy + ry, cx + rx)
    d = np.sqrt(((g.yy[sy] - cy) / ry) ** 2 + ((g.xx[:, sx] - cx) / rx) ** 2)
    return sy, sx, np.clip((1.0 - d) * min(ry, rx) + 0.5, 0, 1)


def _capsule(g: _Grid, y0: float, x0: float, y1: float, x1: float, r: float) -> _Shape:
    sy, sx = g.window(min(y0, y1) - r, min(x0, x1) - r, max(y0, y1) + r, max(x0, x1) + r)
    yy, xx = g.yy[sy], g.xx[:, sx]
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-6), 0, 1)
    d = np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))
    return sy, sx, np.clip(r - d + 0.5, 0, 1)


def _trapezoid(
    g: _Grid, top: float, bottom: float, cx: float, half_top: float, half_bottom: float
) -> _Shape:
    """A box whose half-width goes linearly from `half_top` to `half_bottom`."""
    half_max = max(half_top, half_bottom)
    sy, sx = g.window(top, cx - half_max, bottom, cx + half_max)
    yy, xx = g.yy[sy], g.xx[:, sx]
    f = np.clip((yy - top) / max(bottom - top, 1e-6), 0, 1)
    half = half_top + (half_bottom - half_top) * f
    inside = np.minimum(np.minimum(half - np.abs(xx - cx), yy - top), bottom - yy)
    return sy, sx, np.clip(inside + 0.5, 0, 1)


def _rect(g: _Grid, y0: float, x0: float, y1: float, x1: float) -> _Shape:
    sy, sx = g.window(y0, x0, y1, x1)
    yy, xx = g.yy[sy], g.xx[:, sx]
    inside = np.minimum(np.minimum(yy - y0, y1 - yy), np.minimum(xx - x0, x1 - xx))
    return sy, sx, np.clip(inside + 0.5, 0, 1)


def _pattern(
    g: _Grid, kind: str, base: np.ndarray, other: np.ndarray, period: float, phase: float
) -> np.ndarray:
    """Colour field of a solid, striped or checked cloth, broadcastable to (H, W, 3)."""
    if kind == "solid":
        return base.reshape(1, 1, 3)
    wy = np.sin(2 * math.pi * g.yy / period + phase)[..., None] > 0  # (H, 1, 1)
    wx = np.sin(2 * math.pi * g.xx / period + phase)[..., None] > 0  # (1, W, 1)
    sel = {"hstripes": wy, "vstripes": wx, "checks": wy ^ wx}[kind]
    return np.where(sel, other, base).astype(np.float32)


def _paint(img: np.ndarray, shape: _Shape, colour: np.ndarray, alpha: float = 1.0) -> None:
    """Alpha-blend `colour` (RGB, or an (H, W, 3) field) into `img` where `shape` covers it."""
    sy, sx, mask = shape
    if mask.size == 0:
        return
    m = mask[..., None] * np.float32(alpha)
    if colour.ndim == 3:  # a field; size-1 axes broadcast
        colour = colour[
            sy if colour.shape[0] > 1 else slice(None), sx if colour.shape[1] > 1 else slice(None)
        ]
    region = img[sy, sx]
    img[sy, sx] = region + m * (colour - region)


def _background(g: _Grid, cam: _Camera, rng: np.random.Generator, clutter: int) -> np.ndarray:
    # the camera's scene, mixed with another scene of the domain (boxes see different parts)
    mix = float(rng.uniform(0.2, 0.8))
    other = cam.pool[int(rng.integers(len(cam.pool)))]
    pal = (1 - mix) * cam.palette + mix * other
    pal = pal * rng.uniform(0.9, 1.1, (4, 1)).astype(np.float32)
    horizon = g.h * float(np.clip(cam.horizon + rng.normal(0, 0.05), 0.2, 0.85))
    f = np.clip((g.yy - horizon) / (0.04 * g.h) + 0.5, 0, 1)[..., None]
    img = pal[0] * (1 - f) + pal[1] * f
    # texture at two scales (surfaces, shadows, foliage): mostly brightness, a little colour
    tex = np.zeros((g.h, g.w, 3), np.float32)
    for cell, amp in ((10, 0.7), (4, 0.4)):
        ch, cw = max(2, g.h // cell), max(2, g.w // cell)
        noise = rng.uniform(0, 255, (ch, cw, 1)) + rng.normal(0, 18, (ch, cw, 3))
        small = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "RGB")
        up = np.asarray(small.resize((g.w, g.h), Image.BILINEAR), dtype=np.float32)
        tex += amp * (up / 255 - 0.5)
    img = img * (1 + tex)
    s = g.h / 128
    for _ in range(clutter):
        colour = np.clip(pal[int(rng.integers(2, 4))] * rng.uniform(0.6, 1.3), 0, 1)
        if rng.random() < 0.15:  # a stray saturated object (sign, car, plant)
            colour = _CLOTHES[int(rng.integers(len(_CLOTHES)))]
        cy, cx = rng.uniform(0, g.h), rng.uniform(0, g.w)
        ry, rx = rng.uniform(4, 30) * s, rng.uniform(4, 22) * s
        shape = (
            _ellipse(g, cy, cx, ry, rx)
            if rng.random() < 0.5
            else _rect(g, cy - ry, cx - rx, cy + ry, cx + rx)
        )
        _paint(img, shape, colour, alpha=float(rng.uniform(0.6, 1.0)))
    for _ in range(int(rng.integers(0, 3))):  # poles, lane marks, kerbs
        colour = np.clip(pal[int(rng.integers(0, 4))] * rng.uniform(0.5, 1.4), 0, 1)
        if rng.random() < 0.5:
            x = rng.uniform(0, g.w)
            line = _capsule(g, -5, x, g.h + 5, x + rng.normal(0, 3), rng.uniform(0.7, 2.5) * s)
        else:
            y = rng.uniform(horizon, g.h)
            line = _capsule(g, y, -5, y + rng.normal(0, 4), g.w + 5, rng.uniform(0.6, 1.8) * s)
        _paint(img, line, colour)
    return img.astype(np.float32)


def _person(
    g: _Grid, img: np.ndarray, who: _Identity, cam: _Camera, rng: np.random.Generator
) -> tuple[float, float, float]:
    """Draw a person into `img`; returns (top, bottom, centre x) of the figure."""
    ph = g.h * cam.scale * who.height * float(rng.uniform(0.92, 1.05))
    ph = min(ph, g.h * 0.95)
    top = (g.h - ph) * float(rng.uniform(0.2, 0.8))
    cx = g.w / 2 + float(rng.normal(0, 0.05 * g.w))
    view = ("front", "back", "side")[int(rng.choice(3, p=[0.4, 0.35, 0.25]))]
    stride = float(rng.uniform(-1, 1))
    swing = float(rng.uniform(-1, 1))
    phase = float(rng.uniform(0, 2 * math.pi))
    side = view == "side"
    wf = who.width * (0.62 if side else 1.0)

    head_r = 0.062 * ph * who.head
    head_cy = top + head_r * 1.05
    neck = head_cy + head_r * 0.9
    shoulder = neck + 0.02 * ph
    hip = top + 0.52 * ph
    feet = top + ph
    sw = 0.16 * ph * wf  # half shoulder width
    ww = sw * 0.84  # half waist width
    leg_r = 0.06 * ph * who.width * (0.85 if side else 1.0)
    arm_r = 0.04 * ph * who.width

    # shading: cylindrical fall-off across the body, lit from the camera's side
    rel = (g.xx - cx) / max(sw * 1.4, 1.0)
    shade = np.clip(1.0 - 0.3 * rel**2 + 0.12 * cam.light * rel, 0.45, 1.15)[..., None]
    period_u = ph / who.upper_freq
    upper = _pattern(g, who.upper_pattern, who.upper, who.upper_pattern_rgb, period_u, phase)
    lower = _pattern(g, who.lower_pattern, who.lower, who.lower_pattern_rgb, ph / 14, phase)
    upper, lower = upper * shade, lower * shade
    skin = who.skin * shade

    pack_back = who.backpack is not None and view == "back"
    if who.backpack is not None and side:  # pack sticks out behind the torso
        bx = cx - sw - 0.05 * ph
        _paint(
            img,
            _rect(g, shoulder + 0.02 * ph, bx - 0.06 * ph, hip - 0.04 * ph, bx + 0.08 * ph),
            who.backpack * shade,
        )
    if who.long_hair and view != "front":
        _paint(
            img,
            _rect(g, head_cy, cx - head_r * 0.9, shoulder + 0.1 * ph, cx + head_r * 0.9),
            who.hair * shade,
        )

    # legs: trousers to the ankle, shorts to the knee, skirt as a flared trapezoid
    if side:
        feet_x = (cx + stride * 0.12 * ph, cx - stride * 0.12 * ph)
        hip_x = (cx, cx)
    else:
        off = who.leg_sep * ww * 0.55
        feet_x = (cx - off - abs(stride) * 0.03 * ph, cx + off + abs(stride) * 0.03 * ph)
        hip_x = (cx - off, cx + off)
    knee = hip + (feet - hip) * 0.5
    for hx, fx in zip(hip_x, feet_x, strict=True):
        leg = _capsule(g, hip - 0.02 * ph, hx, feet - leg_r * 0.6, fx, leg_r)
        if who.lower_kind == "trousers":
            _paint(img, leg, lower)
        else:
            _paint(img, leg, skin)
            if who.lower_kind == "shorts":
                kx = hx + (fx - hx) * 0.55
                _paint(img, _capsule(g, hip - 0.02 * ph, hx, knee, kx, leg_r * 1.1), lower)
        _paint(img, _ellipse(g, feet - leg_r * 0.5, fx, leg_r * 0.7, leg_r * 1.4), who.shoes)
    _paint(img, _trapezoid(g, hip - 0.04 * ph, hip + 0.05 * ph, cx, ww, ww * 1.02), lower)
    if who.lower_kind == "skirt":
        _paint(img, _trapezoid(g, hip - 0.04 * ph, knee + 0.04 * ph, cx, ww, ww * 1.6), lower)

    # torso and arms (sleeves in the upper colour, skin below the elbow for short sleeves)
    _paint(img, _trapezoid(g, shoulder, hip, cx, sw, ww), upper)
    if side:
        arms = [(cx, cx + swing * 0.1 * ph)]
    else:
        arms = [
            (cx - sw + arm_r * 0.6, cx - sw - 0.025 * ph + swing * 0.02 * ph),
            (cx + sw - arm_r * 0.6, cx + sw + 0.025 * ph - swing * 0.02 * ph),
        ]
    hand_y = hip + 0.03 * ph
    for sx, hx in arms:
        y0 = shoulder + arm_r
        if who.long_sleeves:
            _paint(img, _capsule(g, y0, sx, hand_y, hx, arm_r), upper)
        else:
            _paint(img, _capsule(g, y0, sx, hand_y, hx, arm_r * 0.85), skin)
            ey, ex = (y0 + hand_y) / 2, (sx + hx) / 2
            _paint(img, _capsule(g, y0, sx, ey, ex, arm_r * 1.05), upper)
        _paint(img, _ellipse(g, hand_y + arm_r * 0.5, hx, arm_r * 0.9, arm_r * 0.9), skin)

    if who.backpack is not None:
        if pack_back:
            _paint(
                img,
                _rect(g, shoulder + 0.03 * ph, cx - sw * 0.72, hip - 0.05 * ph, cx + sw * 0.72),
                who.backpack * shade,
            )
        elif view == "front":  # shoulder straps only
            for sx in (cx - sw * 0.55, cx + sw * 0.55):
                strap = _capsule(
                    g, shoulder, sx, shoulder + 0.2 * ph, sx * 0.9 + cx * 0.1, max(0.7, 0.012 * ph)
                )
                _paint(img, strap, who.backpack * shade)
    if who.bag is not None:
        bx = cx + who.bag_side * (sw + 0.03 * ph) if not side else cx + 0.02 * ph
        if not side:
            strap = _capsule(
                g, shoulder, cx - who.bag_side * sw * 0.6, hip, bx, max(0.6, 0.01 * ph)
            )
            _paint(img, strap, who.bag * 0.7)
        bag = _rect(g, hip - 0.03 * ph, bx - 0.055 * ph, hip + 0.1 * ph, bx + 0.055 * ph)
        _paint(img, bag, who.bag * shade)

    # head, hair, hat
    _paint(img, _ellipse(g, head_cy, cx, head_r, head_r * 0.84), skin)
    if view == "back":
        _paint(
            img,
            _ellipse(g, head_cy - head_r * 0.05, cx, head_r * 1.02, head_r * 0.88),
            who.hair * shade,
        )
    elif side:
        _paint(
            img,
            _ellipse(g, head_cy - head_r * 0.3, cx - head_r * 0.25, head_r * 0.8, head_r * 0.75),
            who.hair * shade,
        )
    else:
        _paint(
            img,
            _ellipse(g, head_cy - head_r * 0.6, cx, head_r * 0.5, head_r * 0.86),
            who.hair * shade,
        )
    if who.hat is not None:
        _paint(
            img,
            _ellipse(g, head_cy - head_r * 0.55, cx, head_r * 0.55, head_r * 0.95),
            who.hat * shade,
        )
        brim = head_r * (0.7 if side else 0.0)  # a side view shows the peak sticking out
        y0, y1 = head_cy - head_r * 0.25, head_cy - head_r * 0.1
        _paint(img, _rect(g, y0, cx - head_r + brim, y1, cx + head_r + brim * 1.5), who.hat * 0.8)
    return top, feet, cx


def _render(g: _Grid, who: _Identity | None, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """One box: background, person (None gives a junk box), occluder, camera pipeline."""
    junk = who is None
    img = _background(g, cam, rng, clutter=int(rng.integers(6, 12) if junk else rng.integers(2, 7)))
    if who is not None:
        top, bottom, cx = _person(g, img, who, cam, rng)
        if rng.random() < cam.occlusion:
            # an occluder from the scene: a car/bench over the legs or a pole/person at the side
            colour = np.clip(cam.palette[int(rng.integers(4))] * rng.uniform(0.5, 1.3), 0, 1)
            if rng.random() < 0.6:
                y0 = top + (bottom - top) * rng.uniform(0.6, 0.85)
                shape = _rect(g, y0, -2, g.h + 2, g.w + 2)
            else:
                x0 = cx + rng.choice([-1, 1]) * g.w * rng.uniform(0.12, 0.35)
                half = g.w * rng.uniform(0.06, 0.15)
                shape = _rect(g, rng.uniform(-2, g.h * 0.3), x0 - half, g.h + 2, x0 + half)
            _paint(img, shape, colour * rng.uniform(0.8, 1.1, 3).astype(np.float32))
    # camera response: gain and colour cast with per-image jitter, contrast, gamma
    gain = cam.gain * float(rng.uniform(0.93, 1.07))
    cast = cam.cast * rng.uniform(0.97, 1.03, 3)
    img = img * (gain * cast).astype(np.float32)
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * cam.contrast + mean
    img = np.clip(img, 0, 1) ** cam.gamma
    if rng.random() < 0.5:  # viewpoint: mirror the whole box
        img = img[:, ::-1]
    pil = Image.fromarray((img * 255 + 0.5).astype(np.uint8), "RGB")
    res = cam.resolution * float(rng.uniform(0.85, 1.15))
    if res < 0.95:  # a sensor with fewer pixels than the box: down then up
        small = (max(8, round(g.w * res)), max(16, round(g.h * res)))
        pil = pil.resize(small, Image.BILINEAR).resize((g.w, g.h), Image.BILINEAR)
    radius = (cam.blur + float(rng.uniform(0, 0.6)) + (1.5 if junk else 0.0)) * g.h / 128
    if radius > 0.15:
        pil = pil.filter(ImageFilter.GaussianBlur(radius))
    out = np.asarray(pil, dtype=np.float32)
    sigma = 255 * cam.noise * float(rng.uniform(0.7, 1.3))
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _partial(pixels: np.ndarray, mode: str, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """A partial view of a rendered box: a crop that keeps 45–75 % of its height (the upper
    body, or a band anywhere), or a scene-coloured occluder over the lower part or one side."""
    h, w, _ = pixels.shape
    if mode == "crop":
        keep = max(16, round(h * rng.uniform(0.45, 0.75)))
        top = 0 if rng.random() < 0.7 else int(rng.integers(0, h - keep + 1))
        return np.ascontiguousarray(pixels[top : top + keep])
    out = pixels.copy()
    colour = np.clip(cam.palette[int(rng.integers(len(cam.palette)))] * 255, 0, 255)
    if rng.random() < 0.6:
        out[h - round(h * rng.uniform(0.33, 0.5)) :] = colour.astype(np.uint8)
    else:
        span = round(w * rng.uniform(0.33, 0.45))
        columns = slice(0, span) if rng.random() < 0.5 else slice(w - span, w)
        out[:, columns] = colour.astype(np.uint8)
    return out

"""What people look at: a rank list, the CMC and ROC curves, distance histograms (PNG), and the
evaluation report around them (a Markdown table, a self-contained HTML page, the ROC as data).

A report folder, as `write_report` leaves it (evaluate's `report` output):

    metrics.md    one row per test set: rank-1/5/10, mAP, mINP, TAR@FAR, in %
    report.html   the same table and every PNG, embedded: one file to open or attach
    roc.json      the primary test set's ROC, at most KFP_ROC_POINTS points (KFP's ROC view)
    <test set>/   rank_list.png cmc.png roc.png distances.png
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reid_core.data.cameras import same_camera
from reid_core.evaluation.inputs import pid_index
from reid_core.evaluation.rank import RankResult
from reid_core.evaluation.verification import VerificationResult, positive_distances

CORRECT, WRONG, JUNK, QUERY = (40, 170, 60), (210, 40, 40), (150, 150, 150), (40, 90, 200)
MARKDOWN_FILE, HTML_FILE, ROC_FILE = "metrics.md", "report.html", "roc.json"
KFP_ROC_POINTS = 200  # enough for a smooth curve in the KFP UI, small enough for artifact metadata
_RANK_COLUMNS = (("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"))
CAPTIONS = {
    "rank_list.png": "Rank lists: query (blue), then its top matches: same id from another "
    "camera (green), another id (red), same id and camera (grey, junk: ignored by the protocol).",
    "cmc.png": "CMC: share of queries with a correct match within the first k.",
    "roc.png": "ROC of verification over all query-gallery pairs.",
    "distances.png": "Distances of same-id (positive) and different-id (negative) pairs.",
}


Tile = tuple[Path, tuple[int, int, int], str]
"""An image in a rank list: its path, its frame colour and a caption ('' for none)."""


def rank_list_image(
    dest: Path,
    root: Path,
    dist: np.ndarray,
    query: tuple[np.ndarray, np.ndarray, np.ndarray],
    gallery: tuple[np.ndarray, np.ndarray, np.ndarray],
    num_queries: int = 8,
    top_k: int = 10,
    thumb: tuple[int, int] = (48, 96),
) -> Path:
    """Queries (blue) with their top-k gallery items: same id from another camera green,
    another id red, same id and camera grey (removed by the protocol). query and gallery are
    (paths, pids, camids) relative to `root`."""
    (q_paths, q_pids, q_cams), (g_paths, g_pids, g_cams) = query, gallery
    picks = np.unique(np.linspace(0, len(q_paths) - 1, min(num_queries, len(q_paths))).astype(int))
    top_k = min(top_k, dist.shape[1])
    rows = []
    for qi in picks:
        order = np.argsort(dist[qi], kind="stable")[:top_k]
        tiles: list[Tile] = [(root / q_paths[qi], QUERY, "")]
        for gi in order:
            same = g_pids[gi] == q_pids[qi]
            colour = (JUNK if same_camera(q_cams[qi], g_cams[gi]) else CORRECT) if same else WRONG
            tiles.append((root / g_paths[gi], colour, ""))
        rows.append(tiles)
    return tile_rows(dest, rows, thumb)


def tile_rows(
    dest: Path, rows: Sequence[Sequence[Tile]], thumb: tuple[int, int] = (48, 96)
) -> Path:
    """Draw rows of framed thumbnails (first of each row set apart), captions underneath."""
    w, h, pad = thumb[0], thumb[1], 4
    text_h = 12 if any(caption for row in rows for _, _, caption in row) else 0
    columns = max((len(row) for row in rows), default=1)
    canvas = Image.new(
        "RGB", (columns * (w + pad) + 2 * pad, len(rows) * (h + text_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        for col, (path, colour, caption) in enumerate(row):
            with Image.open(path) as img:
                tile = img.convert("RGB").resize((w - 4, h - 4))
            x, y = pad + col * (w + pad) + (pad if col else 0), pad + r * (h + text_h + pad)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
            canvas.paste(tile, (x + 2, y + 2))
            if caption:
                draw.text((x + 1, y + h), caption, fill=(0, 0, 0))
    canvas.save(dest, format="PNG")
    return dest


def curves(
    dest_dir: Path,
    result: RankResult,
    verification: VerificationResult,
    dist: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    title: str = "",
) -> list[Path]:
    """cmc.png, roc.png and distances.png (positives vs negatives) in `dest_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ranks = np.arange(1, len(result.cmc) + 1)
    ax.plot(ranks, result.cmc, marker=".")
    ax.set(xlabel="rank", ylabel="matching rate", ylim=(0, 1.02), title=f"CMC {title}")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, dest_dir / "cmc.png"))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogx(np.clip(verification.roc_far, 1e-7, 1), verification.roc_tar)
    for far, tar in verification.tar.items():
        ax.scatter([far], [tar], zorder=3)
        ax.annotate(f"{tar:.3f}", (far, tar), textcoords="offset points", xytext=(4, -10))
    ax.set(
        xlabel="false accept rate", ylabel="true accept rate", ylim=(0, 1.02), title=f"ROC {title}"
    )
    ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, dest_dir / "roc.png"))

    positives = positive_distances(dist, pid_index(q_pids, g_pids), q_cams, g_cams)
    same = q_pids[:, None] == g_pids[None, :]
    negatives = _sample(dist[~same] if dist.size <= 4_000_000 else _sample_pairs(dist, same))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(
        min(positives.min(), negatives.min()), max(positives.max(), negatives.max()), 60
    )
    ax.hist(negatives, bins, density=True, alpha=0.6, label="different id", color="tab:red")
    ax.hist(positives, bins, density=True, alpha=0.6, label="same id", color="tab:green")
    ax.set(xlabel="distance", ylabel="density", title=f"distances {title}")
    ax.legend()
    paths.append(_save(fig, dest_dir / "distances.png"))
    return paths


def _sample(values: np.ndarray, limit: int = 1_000_000) -> np.ndarray:
    if len(values) <= limit:
        return values
    return np.random.default_rng(0).choice(values, limit, replace=False)


def _sample_pairs(dist: np.ndarray, same: np.ndarray, count: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.integers(0, dist.shape[0], count)
    cols = rng.integers(0, dist.shape[1], count)
    keep = ~same[rows, cols]
    return dist[rows[keep], cols[keep]]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class SetReport:
    """One test set's row of the report: its name, metrics (fractions 0-1) and PNG files."""

    name: str
    metrics: Mapping[str, float]
    images: Sequence[Path]


def roc_points(
    verification: VerificationResult, max_points: int = KFP_ROC_POINTS
) -> dict[str, list[float]]:
    """The ROC as KFP's `ClassificationMetrics.log_roc_curve` takes it: `fpr`, `tpr` and
    `threshold` lists of at most `max_points`, FAR and TAR ascending in [0, 1]. A threshold is
    the distance below which a pair is accepted (a distance: it grows along the curve)."""
    far = np.clip(np.asarray(verification.roc_far, np.float64), 0.0, 1.0)
    tar = np.clip(np.asarray(verification.roc_tar, np.float64), 0.0, 1.0)
    thresholds = np.asarray(verification.roc_thresholds, np.float64)
    keep = np.unique(np.linspace(0, len(far) - 1, min(max_points, len(far))).round().astype(int))
    return {
        "fpr": np.maximum.accumulate(far[keep]).tolist(),
        "tpr": np.maximum.accumulate(tar[keep]).tolist(),
        "threshold": thresholds[keep].tolist(),
    }


def metrics_table(sets: Sequence[SetReport], fars: Sequence[float]) -> list[list[str]]:
    """Header row plus one row per test set: name, rank-1/5/10, mAP, mINP, TAR@FAR (in %);
    a metric averaged over draws shows its spread too (`mean ± std`)."""
    columns = [*_RANK_COLUMNS, ("mAP", "mAP"), ("mINP", "mINP")]
    columns += [(f"tar_at_far_{far:g}", f"TAR@FAR={far:.0e}") for far in sorted(fars)]
    rows = [["test set", *(f"{label} (%)" for _, label in columns)]]
    for ts in sets:
        cells = [_percent(ts.metrics, key) for key, _ in columns]
        rows.append([ts.name, *cells])
    return rows


def _percent(metrics: Mapping[str, float], key: str) -> str:
    if key not in metrics:
        return "-"
    spread = metrics.get(f"{key}_std")
    cell = f"{100 * metrics[key]:.1f}"
    return cell if spread is None else f"{cell} ± {100 * spread:.1f}"


def markdown_table(sets: Sequence[SetReport], fars: Sequence[float]) -> str:
    """`metrics_table` as a GitHub-flavoured Markdown table (numbers right-aligned)."""
    header, *body = metrics_table(sets, fars)
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_report(
    dest: Path,
    title: str,
    sets: Sequence[SetReport],
    fars: Sequence[float],
    primary_roc: VerificationResult,
) -> list[Path]:
    """Write metrics.md, report.html and roc.json into `dest`, which already holds each test
    set's PNGs (`sets[i].images`). The first test set is the primary one."""
    note = f"Primary test set: {sets[0].name}. All values in %."
    md = dest / MARKDOWN_FILE
    md.write_text(f"## {title}\n\n{markdown_table(sets, fars)}\n{note}\n")
    page = dest / HTML_FILE
    page.write_text(_html_page(title, note, metrics_table(sets, fars), sets))
    roc = dest / ROC_FILE
    roc.write_text(json.dumps(roc_points(primary_roc)) + "\n")
    return [md, page, roc]


def _html_page(title: str, note: str, table: list[list[str]], sets: Sequence[SetReport]) -> str:
    esc = html.escape
    header, *body = table
    rows = ["<tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em}td+td{text-align:right}"
        "figure{display:inline-block;margin:.5em;vertical-align:top;max-width:42em}"
        "figcaption{font-size:.85em;color:#444}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<table>",
        *rows,
        "</table>",
        f"<p>{esc(note)}</p>",
    ]
    for ts in sets:
        parts.append(f"<h2>{esc(ts.name)}</h2>")
        for image in ts.images:
            data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
            caption = CAPTIONS.get(Path(image).name, Path(image).stem)
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" '
                f'alt="{esc(ts.name)} {esc(Path(image).stem)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

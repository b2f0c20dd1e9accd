"""Pictures people look at: a rank list, the CMC and ROC curves, distance histograms (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reid_core.evaluation.inputs import pid_index
from reid_core.evaluation.rank import RankResult
from reid_core.evaluation.verification import VerificationResult, positive_distances

CORRECT, WRONG, JUNK, QUERY = (40, 170, 60), (210, 40, 40), (150, 150, 150), (40, 90, 200)


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
    w, h, pad = thumb[0], thumb[1], 4
    canvas = Image.new(
        "RGB", ((top_k + 1) * (w + pad) + pad, len(picks) * (h + pad) + pad), "white"
    )
    for row, qi in enumerate(picks):
        order = np.argsort(dist[qi], kind="stable")[:top_k]
        tiles = [(q_paths[qi], QUERY)]
        for gi in order:
            same = g_pids[gi] == q_pids[qi]
            colour = (JUNK if g_cams[gi] == q_cams[qi] else CORRECT) if same else WRONG
            tiles.append((g_paths[gi], colour))
        for col, (path, colour) in enumerate(tiles):
            with Image.open(root / path) as img:
                tile = img.convert("RGB").resize((w - 4, h - 4))
            x, y = pad + col * (w + pad) + (pad if col else 0), pad + row * (h + pad)
            ImageDraw.Draw(canvas).rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
            canvas.paste(tile, (x + 2, y + 2))
    canvas.save(dest)
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

import numpy as np
from PIL import Image

from reid_core.evaluation import evaluate_rank, tar_at_far
from reid_core.evaluation.reports import CORRECT, JUNK, QUERY, WRONG, curves, rank_list_image


def tiny_gallery(tmp_path):
    """Four one-colour images; query 0 is pid 1 in camera 0."""
    paths = []
    for name in ("q.jpg", "g_same_id.jpg", "g_other_id.jpg", "g_same_cam.jpg"):
        Image.new("RGB", (32, 64), (200, 200, 0)).save(tmp_path / name)
        paths.append(name)
    query = (np.array(paths[:1]), np.array([1]), np.array([0]))
    gallery = (np.array(paths[1:]), np.array([1, 2, 1]), np.array([1, 1, 0]))
    return query, gallery


def test_rank_list_colours_each_match_by_the_protocol(tmp_path):
    query, gallery = tiny_gallery(tmp_path)
    dist = np.array([[0.1, 0.2, 0.3]])  # ranked: same id (other camera), other id, same camera
    out = rank_list_image(tmp_path / "r.png", tmp_path, dist, query, gallery, thumb=(20, 40))
    img = Image.open(out).convert("RGB")
    pad, w = 4, 20
    borders = [img.getpixel((pad + col * (w + pad) + (pad if col else 0), pad)) for col in range(4)]
    assert borders == [QUERY, CORRECT, WRONG, JUNK]


def test_curves_are_written_as_pngs(tmp_path):
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(1, 6, 10), rng.integers(1, 6, 40)
    q_cams, g_cams = np.zeros(10, int), np.ones(40, int)
    dist = rng.random((10, 40)) + (q_pids[:, None] != g_pids[None, :])
    result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 20)
    verification = tar_at_far(dist, q_pids, g_pids, q_cams, g_cams)
    paths = curves(tmp_path, result, verification, dist, q_pids, g_pids, q_cams, g_cams, "t")
    assert [p.name for p in paths] == ["cmc.png", "roc.png", "distances.png"]
    for path in paths:
        assert Image.open(path).size[0] > 300

"""Hypothesis strategies shared by the evaluation tests."""

import numpy as np
from hypothesis import strategies as st


@st.composite
def labelled_distances(draw, max_q=12, max_g=40, min_g=1, min_ids=1):
    """(distmat, q_pids, g_pids, q_cams, g_cams): random sizes, ids and cameras, distractors
    (pid 0, gallery only) and, often, many tied distances; float32 or float64."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_q, num_g = draw(st.integers(1, max_q)), draw(st.integers(min_g, max_g))
    ids, cams = draw(st.integers(min_ids, 6)), draw(st.integers(1, 4))
    dist = rng.random((num_q, num_g))
    levels = draw(st.sampled_from([0, 2, 5, 50]))
    if levels:
        dist = np.round(dist * levels) / levels
    return (
        dist.astype(draw(st.sampled_from([np.float32, np.float64]))),
        rng.integers(1, ids + 1, num_q),
        rng.integers(0, ids + 1, num_g),
        rng.integers(0, cams, num_q),
        rng.integers(0, cams, num_g),
    )

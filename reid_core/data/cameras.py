"""Camera ids, and the one rule for datasets that record none.

Camera ids are 0-based. `NO_CAMERA` (-1) marks an image whose camera is unknown (VehicleID and
the partial re-id sets record none). The protocol removes a gallery item for sharing the query's
identity and camera; an unknown camera is never the same as any other, so such a query keeps
every gallery image of its identity.
"""

from __future__ import annotations

import numpy as np

NO_CAMERA = -1
_NEVER_EQUAL = -2  # what an unknown gallery camera becomes in `protocol_cameras`


def same_camera(q_camids: np.ndarray | int, g_camids: np.ndarray | int) -> np.ndarray | bool:
    """Whether a query and a gallery item were taken by one known camera (broadcasts)."""
    q, g = np.asarray(q_camids), np.asarray(g_camids)
    return (q == g) & (q != NO_CAMERA)


def protocol_cameras(side: str, camids: np.ndarray) -> np.ndarray:
    """Camera ids that a plain equality test compares as `same_camera` does: unknown gallery
    cameras are recoded so that no query camera (known or not) ever equals them."""
    if side == "gallery" and (camids == NO_CAMERA).any():
        return np.where(camids == NO_CAMERA, _NEVER_EQUAL, camids)
    return camids

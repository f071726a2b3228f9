"""A synthetic stand-in for ``SMPLX_NEUTRAL.npz``, generated in code for tests only.

The real SMPL-X files are licence-gated and never committed. This writes a file with the real
key names and shapes (10,475 vertices, 20,908 faces, 55 joints with the real kinematic tree) so
that the ``smplx`` backend can be exercised end to end. Geometry: a stick-figure skeleton in
the SMPL-X rest frame (y up, facing +z, metres) with each vertex rigidly bound to one joint and
placed symmetrically around it, so the joint regressor returns the joint exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15,
           15, 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38, 21, 40, 41, 21, 43,
           44, 21, 46, 47, 21, 49, 50, 21, 52, 53]


def _joints() -> np.ndarray:
    J = np.zeros((55, 3))
    body = {0: (0, 0, 0), 1: (0.09, -0.08, 0), 2: (-0.09, -0.08, 0), 3: (0, 0.1, 0),
            4: (0.1, -0.5, 0), 5: (-0.1, -0.5, 0), 6: (0, 0.25, 0), 7: (0.1, -0.9, 0),
            8: (-0.1, -0.9, 0), 9: (0, 0.35, 0), 10: (0.1, -0.95, 0.12), 11: (-0.1, -0.95, 0.12),
            12: (0, 0.5, 0), 13: (0.07, 0.45, 0), 14: (-0.07, 0.45, 0), 15: (0, 0.6, 0),
            16: (0.18, 0.45, 0), 17: (-0.18, 0.45, 0), 18: (0.45, 0.45, 0), 19: (-0.45, 0.45, 0),
            20: (0.7, 0.45, 0), 21: (-0.7, 0.45, 0), 22: (0, 0.58, 0.05), 23: (0.03, 0.65, 0.08),
            24: (-0.03, 0.65, 0.08)}
    for j, p in body.items():
        J[j] = p
    # fingers: index, middle, pinky, ring, thumb; 3 joints each, along +x (left) / -x (right)
    z_off = {0: 0.02, 1: 0.0, 2: -0.04, 3: -0.02, 4: 0.045}
    for side, first, wrist in ((1, 25, 20), (-1, 40, 21)):
        for f in range(5):
            base = J[wrist] + np.array([side * (0.07 if f < 4 else 0.03), -0.01 if f == 4 else 0, z_off[f]])
            for k in range(3):
                J[first + 3 * f + k] = base + np.array([side * 0.025 * k, 0, 0])
    return J


def write_synthetic_smplx(directory: str | Path, num_betas: int = 400, seed: int = 0) -> Path:
    """Write ``<directory>/SMPLX_NEUTRAL.npz`` with SMPL-X keys and shapes; return its path."""
    rng = np.random.default_rng(seed)
    V, F, NJ = 10475, 20908, 55
    J = _joints()
    owner = np.arange(V) % NJ
    half = rng.normal(scale=0.02, size=(V // 2, 3))
    offsets = np.concatenate([half, -half, np.zeros((V - 2 * (V // 2), 3))])
    owner_sorted = np.sort(owner)          # pairs (i, i + V//2) may belong to different joints:
    offsets = np.zeros((V, 3))             # make offsets symmetric within each joint instead
    for j in range(NJ):
        idx = np.nonzero(owner_sorted == j)[0]
        n = len(idx) // 2
        o = rng.normal(scale=0.02, size=(n, 3))
        offsets[idx[:n]], offsets[idx[n:2 * n]] = o, -o
    owner = owner_sorted
    v_template = J[owner] + offsets
    J_regressor = np.zeros((NJ, V))
    for j in range(NJ):
        J_regressor[j, owner == j] = 1.0 / (owner == j).sum()
    weights = np.zeros((V, NJ))
    weights[np.arange(V), owner] = 1.0
    faces = np.zeros((F, 3), dtype=np.int64)
    for i in range(F):
        j = i % NJ
        idx = np.nonzero(owner == j)[0]
        faces[i] = rng.choice(idx, 3, replace=False)
    kintree = np.array([[4294967295] + PARENTS[1:], list(range(NJ))], dtype=np.int64)
    data = dict(
        v_template=v_template.astype(np.float64), f=faces.astype(np.uint32),
        J_regressor=J_regressor, weights=weights, kintree_table=kintree,
        shapedirs=rng.normal(scale=1e-3, size=(V, 3, num_betas)),
        posedirs=np.zeros((V, 3, 486)),
        hands_componentsl=np.eye(45), hands_componentsr=np.eye(45),
        hands_meanl=np.zeros(45), hands_meanr=np.zeros(45),
        lmk_faces_idx=rng.integers(0, F, 51).astype(np.int64),
        lmk_bary_coords=np.full((51, 3), 1 / 3),
        dynamic_lmk_faces_idx=rng.integers(0, F, (79, 17)).astype(np.int64),
        dynamic_lmk_bary_coords=np.full((79, 17, 3), 1 / 3),
        vt=rng.uniform(size=(V, 2)), ft=faces.astype(np.int64),
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "SMPLX_NEUTRAL.npz"
    np.savez(path, **data)
    return path

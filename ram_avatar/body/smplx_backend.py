"""SMPL-X body-model backend (user-supplied, licence-gated model files).

SMPL-X (Pavlakos et al., CVPR 2019) is the template of the RAM-Avatar paper (Sec. 3.1). Its
files cannot be redistributed: the user downloads ``SMPLX_NEUTRAL.npz`` from
https://smpl-x.is.tue.mpg.de and points ``--model-path`` at it. The model is posed with the
functional core of the ``smplx`` package (``smplx.lbs.lbs`` and its SMPL-X landmark vertex ids;
optional extra ``ram-avatar-studio[smplx]``), with full-rotation (non-PCA) hands.

Model files are untrusted input (a subject folder's manifest names one). ``smplx.SMPLX`` reads
its file with ``np.load(..., allow_pickle=True)`` (and ``pickle.load`` for ``.pkl``), which runs
code hidden in a crafted file; so this backend never hands a path to ``smplx``: it reads the
``.npz`` itself with ``allow_pickle=False``, takes only the numeric arrays listed in
:data:`REQUIRED_KEYS` (real SMPL-X files also hold pickled ``joint2num``/``part2num`` dicts,
which are never read) and builds the model from those arrays.

Model files are imported once into a user-level cache (``ram-avatar body-model import PATH``,
and automatically by ``capture --body-model smplx --model-path PATH``): only the numeric arrays
are written, as ``<cache>/smplx/<sha256>.npz``, where the sha256 is taken over those arrays
(:func:`arrays_sha256`). A subject's manifest then names the model as ``sha256:<hex>``, never
by a path, and loading it checks the hash again (a mismatch or a model missing from this
user's cache is a clear :class:`ModelFileError`). The cache is ``$RAM_AVATAR_MODELS`` or
``~/.cache/ram_avatar/body_models``. Nothing of SMPL-X is copied into a subject folder.

Joint layout of ``smplx`` output ``joints`` (127 with ``use_face_contour=False``): 55 skeleton
joints (0 pelvis ... 21 right wrist, 22 jaw, 23/24 eyes, 25-39 left hand, 40-54 right hand
in the order index, middle, pinky, ring, thumb), then vertex landmarks 55 nose, 56 right eye,
57 left eye, 58 right ear, 59 left ear, 60-65 feet (L big toe, L small toe, L heel, R ...),
66-70 left fingertips (thumb, index, middle, ring, pinky), 71-75 right fingertips.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ram_avatar.body.base import (BodyModel, BodyOutput, BodyParams, MEDIAPIPE_POSE_NAMES,
                                  rotvec_to_rotmat)
from ram_avatar.errors import ModelFileError

NUM_VERTICES = 10475
NUM_JOINTS = 55
#: shape / expression components of the full SMPL-X basis (smplx.SMPLX.SHAPE_SPACE_DIM, ...)
SHAPE_SPACE_DIM, EXPRESSION_SPACE_DIM = 300, 100
#: keys (and trailing shapes) a usable SMPLX_*.npz must contain
REQUIRED_KEYS = {
    "v_template": (NUM_VERTICES, 3), "f": (20908, 3), "J_regressor": (NUM_JOINTS, NUM_VERTICES),
    "weights": (NUM_VERTICES, NUM_JOINTS), "kintree_table": (2, NUM_JOINTS),
    "shapedirs": (NUM_VERTICES, 3, None), "posedirs": (NUM_VERTICES, 3, 486),
    "hands_componentsl": (45, 45), "hands_componentsr": (45, 45), "hands_meanl": (45,),
    "hands_meanr": (45,), "lmk_faces_idx": (None,), "lmk_bary_coords": (None, 3),
    "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
    "vt": (None, 2), "ft": (20908, 3),
}
SMPLX_BODY_JOINTS = [
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist",
]
SMPLX_HAND_JOINTS = [f"{f}{k}" for f in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]
_HEAD_CHAIN = [0, 3, 6, 9, 12, 15]  # pelvis -> spine1 -> spine2 -> spine3 -> neck -> head

_POSE_JOINT = {
    "nose": 55, "left_eye": 57, "right_eye": 56, "left_ear": 59, "right_ear": 58,
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_pinky": 31, "right_pinky": 46, "left_index": 25,
    "right_index": 40, "left_thumb": 38, "right_thumb": 53, "left_hip": 1, "right_hip": 2,
    "left_knee": 4, "right_knee": 5, "left_ankle": 7, "right_ankle": 8, "left_heel": 62,
    "right_heel": 65, "left_foot_index": 60, "right_foot_index": 63,
}


def _hand21(wrist: int, first: int, tips: int) -> list[int]:
    """SMPL-X joint indices of MediaPipe's hand-21 layout for one hand."""
    finger_first = {"index": first, "middle": first + 3, "pinky": first + 6, "ring": first + 9,
                    "thumb": first + 12}
    out = [wrist]
    for f, name in enumerate(("thumb", "index", "middle", "ring", "pinky")):
        out += [finger_first[name], finger_first[name] + 1, finger_first[name] + 2, tips + f]
    return out


def find_smplx_file(model_path, gender: str = "neutral") -> Path:
    """Locate ``SMPLX_<GENDER>.npz`` from a file path or a directory.

    Raises:
        ModelFileError: nothing found; the message says where to put the file.
    """
    name = f"SMPLX_{gender.upper()}.npz"
    if model_path is None:
        raise ModelFileError(
            "--body-model smplx needs --model-path DIR pointing at the SMPL-X model files "
            f"(DIR/{name} or DIR/smplx/{name}); download them from https://smpl-x.is.tue.mpg.de "
            "(licence required), or use the embedded default --body-model anny.")
    p = Path(model_path).expanduser()
    for cand in (p, p / name, p / "smplx" / name):
        if cand.is_file():
            return cand
    raise ModelFileError(
        f"SMPL-X model file not found: looked for {p}, {p / name} and {p / 'smplx' / name}. "
        f"Put {name} (from https://smpl-x.is.tue.mpg.de) in that directory, or use "
        "--body-model anny.")


def load_smplx_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read the numeric arrays of an SMPL-X ``.npz`` without unpickling anything.

    The file is opened with ``np.load(path, allow_pickle=False)``: a file that is not a zip
    archive (e.g. a pickle renamed ``.npz``) or a required member stored as a pickled object
    array is rejected before any of its bytes are unpickled, so a crafted file cannot run code.
    Only the keys of :data:`REQUIRED_KEYS` are read; other members (the official files' pickled
    ``joint2num``/``part2num``) are never touched.

    Args:
        path: an ``SMPLX_<GENDER>.npz`` file.
    Returns:
        ``{key: array}`` for every key of :data:`REQUIRED_KEYS`, e.g. ``v_template`` (V, 3),
        ``shapedirs`` (V, 3, n_shape + n_expr), ``posedirs`` (V, 3, 486), ``weights`` (V, 55).
    Raises:
        ModelFileError: unreadable / not an ``.npz`` / pickled content, missing key, non-numeric
            array or wrong shape (the message names it and says what to do).
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any read failure is a bad model file
        raise ModelFileError(
            f"cannot read SMPL-X file {path}: {e}. It must be the .npz of the official SMPL-X "
            "download (pickled files are refused: loading them can run code); re-download "
            "SMPLX_NEUTRAL.npz from https://smpl-x.is.tue.mpg.de.") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path} holds a single array, not an SMPL-X .npz archive; "
                             "re-download SMPLX_NEUTRAL.npz from https://smpl-x.is.tue.mpg.de.")
    with data:
        missing = sorted(set(REQUIRED_KEYS) - set(data.files))
        if missing:
            raise ModelFileError(
                f"{path} is not a usable SMPL-X model file: missing keys {missing}. Use the "
                "SMPLX_NEUTRAL.npz of the official SMPL-X (v1.1) download, which includes UVs "
                "(vt, ft).")
        arrays = {}
        for k, shape in REQUIRED_KEYS.items():
            try:
                arr = data[k]
            except Exception as e:  # noqa: BLE001 - pickled member, damaged zip entry, ...
                raise ModelFileError(
                    f"{path}: key {k!r} cannot be read as a numeric array ({e}); the file is "
                    "damaged or crafted (pickled arrays are refused). Re-download it.") from e
            if arr.dtype.kind not in "biuf":
                raise ModelFileError(f"{path}: key {k!r} has dtype {arr.dtype}, expected numbers")
            got = arr.shape
            if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
                raise ModelFileError(
                    f"{path}: key {k!r} has shape {got}, expected {shape} (None = any)")
            arrays[k] = arr
    return arrays


#: prefix of a model reference by content hash (what manifests store)
REF_PREFIX = "sha256:"


def model_cache_dir() -> Path:
    """The user-level body-model cache: ``$RAM_AVATAR_MODELS`` or ``~/.cache/ram_avatar/body_models``."""
    env = os.environ.get("RAM_AVATAR_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ram_avatar" / "body_models"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the model's numeric arrays (key, dtype, shape and bytes, keys sorted): the
    same model gives the same hash whatever the file around it (zip layout, extra members)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def import_smplx_model(model_path, gender: str = "neutral") -> dict:
    """Import an SMPL-X model file into the user's cache as numeric arrays only.

    Args:
        model_path: the ``SMPLX_<GENDER>.npz`` file or a directory holding it (as ``--model-path``).
        gender: ``neutral``, ``male`` or ``female``.
    Returns:
        dict ``name`` ("smplx"), ``ref`` (``sha256:<hex>``, what manifests store), ``sha256``,
        ``path`` (the cached file), ``source`` (the imported file), ``imported`` (False when the
        cache already held it).
    Raises:
        ModelFileError: the file is missing, pickled or malformed (see :func:`load_smplx_arrays`).
    """
    src = find_smplx_file(model_path, gender)
    arrays = load_smplx_arrays(src)
    digest = arrays_sha256(arrays)
    dest = model_cache_dir() / "smplx" / f"{digest}.npz"
    imported = not dest.is_file()
    if imported:
        from ram_avatar.utils import atomic_path

        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # numeric arrays only: the cache holds nothing to unpickle
    return {"name": "smplx", "ref": REF_PREFIX + digest, "sha256": digest, "path": str(dest),
            "source": str(src), "imported": imported}


def resolve_smplx_model(model_path, gender: str = "neutral") -> tuple[Path, str | None]:
    """``(file, expected sha256 or None)`` for a ``--model-path`` / manifest reference.

    ``sha256:<hex>`` names a model in the user's cache (:func:`import_smplx_model`); anything
    else is a path as in :func:`find_smplx_file`.

    Raises:
        ModelFileError: a reference that is not in this user's cache, or no file at the path.
    """
    if isinstance(model_path, str) and model_path.startswith(REF_PREFIX):
        digest = model_path[len(REF_PREFIX):]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ModelFileError(f"malformed SMPL-X model reference {model_path!r}")
        path = model_cache_dir() / "smplx" / f"{digest}.npz"
        if not path.is_file():
            raise ModelFileError(
                f"this subject uses the SMPL-X model {model_path[:19]}..., which is not in your "
                f"model cache ({model_cache_dir()}): import your licensed copy of the same file "
                "with `ram-avatar body-model import PATH/SMPLX_NEUTRAL.npz` (download it from "
                "https://smpl-x.is.tue.mpg.de).")
        return path, digest
    return find_smplx_file(model_path, gender), None


def validate_smplx_npz(path: Path) -> None:
    """Check that an SMPL-X npz has every key the backend needs with the right shapes.

    Reads the file like :func:`load_smplx_arrays` (nothing is unpickled).

    Raises:
        ModelFileError: unreadable file, missing key or wrong shape (the message names them).
    """
    load_smplx_arrays(path)


class SMPLXBodyModel(BodyModel):
    """SMPL-X as a :class:`BodyModel`, built from the model file's numeric arrays and posed
    with ``smplx.lbs.lbs`` (the same result as ``smplx.SMPLX``; see the module docstring for why
    ``smplx.SMPLX`` itself is not used to load the file).

    Args:
        model_path: directory containing ``SMPLX_NEUTRAL.npz`` (or ``smplx/SMPLX_NEUTRAL.npz``),
            the file itself, or ``sha256:<hex>``, a model in the user's cache
            (:func:`import_smplx_model`).
        gender: ``neutral``, ``male`` or ``female``.
        num_betas: shape coefficients (10 by default).
        num_expression: expression coefficients (10 by default).
    Raises:
        ModelFileError: missing/malformed/pickled model file, or the ``smplx`` package is not
            installed.
    """

    name = "smplx"

    def __init__(self, model_path, gender: str = "neutral", num_betas: int = 10,
                 num_expression: int = 10):
        super().__init__()
        path, expected = resolve_smplx_model(model_path, gender)
        data = load_smplx_arrays(path)  # numeric arrays only: nothing is unpickled
        digest = arrays_sha256(data)
        if expected is not None and digest != expected:
            raise ModelFileError(
                f"the cached SMPL-X model {path} does not match its name (sha256 {digest[:12]}... "
                f"instead of {expected[:12]}...): the cache is damaged; delete the file and import "
                "the model again with `ram-avatar body-model import PATH`.")
        #: how a manifest names this model: by content hash, never by path
        self.model_ref = REF_PREFIX + digest
        try:
            from smplx.vertex_ids import vertex_ids as smplx_vertex_ids
        except ImportError as e:
            raise ModelFileError("the SMPL-X backend needs the smplx package: "
                                 "pip install 'ram-avatar-studio[smplx]'") from e
        self.model_file = path
        # Same basis selection as smplx.SMPLX: files with >= 300 shape + 100 expression
        # components hold expressions from column 300, the 10+10 files from column 10.
        n_dirs = data["shapedirs"].shape[-1]
        full = n_dirs >= SHAPE_SPACE_DIM + EXPRESSION_SPACE_DIM
        num_betas = min(num_betas, SHAPE_SPACE_DIM if full else 10)
        num_expression = min(num_expression, EXPRESSION_SPACE_DIM if full else 10)
        expr0 = SHAPE_SPACE_DIM if full else 10
        f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
        shapedirs = data["shapedirs"]
        self.register_buffer("shapedirs", f32(np.concatenate(
            [shapedirs[:, :, :num_betas], shapedirs[:, :, expr0:expr0 + num_expression]], -1)))
        self.register_buffer("v_template", f32(data["v_template"]))
        self.register_buffer("J_regressor", f32(data["J_regressor"]))
        # (V, 3, P) -> (P, V*3), the layout smplx.lbs.lbs expects
        self.register_buffer("posedirs", f32(data["posedirs"].reshape(-1, data["posedirs"].shape[-1]).T))
        parents = torch.as_tensor(data["kintree_table"][0].astype(np.int64))
        parents[0] = -1
        self.register_buffer("parents", parents)
        self.register_buffer("lbs_weights", f32(data["weights"]))
        ids = smplx_vertex_ids["smplx"]
        extra = [ids[k] for k in ("nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe",
                                  "LHeel", "RBigToe", "RSmallToe", "RHeel")]
        extra += [ids[h + t] for h in "lr" for t in ("thumb", "index", "middle", "ring", "pinky")]
        #: vertices appended to the 55 skeleton joints (joints 55..75, as smplx's VertexJointSelector)
        self.register_buffer("extra_joint_vertices", torch.tensor(extra, dtype=torch.long))
        self.num_betas, self.num_expression = num_betas, num_expression
        self.body_joint_names = list(SMPLX_BODY_JOINTS)
        self.hand_joint_names = list(SMPLX_HAND_JOINTS)
        #: body_pose indices of the knees (flexion = +x in SMPL-X rest axes)
        self.knee_joints = [SMPLX_BODY_JOINTS.index("left_knee"), SMPLX_BODY_JOINTS.index("right_knee")]
        self.num_vertices_ = NUM_VERTICES
        self.register_buffer("default_betas", torch.zeros(num_betas))
        self.register_buffer("faces", torch.as_tensor(data["f"].astype(np.int64)))
        self.register_buffer("uv_coords", torch.as_tensor(data["vt"].astype(np.float32)))
        self.register_buffer("uv_faces", torch.as_tensor(data["ft"].astype(np.int64)))
        # SMPL-X is y-up facing +z  ->  OpenCV: rotate 180 degrees about x (up = -y, face = -z).
        self.register_buffer("upright_orient", torch.tensor([np.pi, 0.0, 0.0]))
        mask = torch.zeros(33, dtype=torch.bool)
        ref = torch.zeros(33, dtype=torch.long)
        for i, n in enumerate(MEDIAPIPE_POSE_NAMES):
            if n in _POSE_JOINT:
                mask[i], ref[i] = True, _POSE_JOINT[n]
        self.register_buffer("pose_landmark_mask", mask)
        self.register_buffer("pose_ref", ref)
        self.register_buffer("hand_ref", torch.tensor([_hand21(20, 25, 66), _hand21(21, 40, 71)]))

    def _skin(self, p: BodyParams) -> tuple[torch.Tensor, torch.Tensor]:
        """SMPL-X linear blend skinning (as ``smplx.SMPLX.forward``, flat hand mean, eyes at rest).

        Returns:
            vertices (B, V, 3) and joints (B, 76, 3) in metres: the 55 skeleton joints, then the
            21 landmark vertices of :attr:`extra_joint_vertices`; both translated by ``transl``.
        """
        from smplx.lbs import lbs

        B = p.batch_size
        zeros3 = torch.zeros(B, 1, 3, device=p.transl.device, dtype=p.transl.dtype)
        full_pose = torch.cat([p.global_orient.reshape(B, 1, 3), p.body_pose.reshape(B, -1, 3),
                               p.jaw_pose.reshape(B, 1, 3), zeros3, zeros3,
                               p.left_hand_pose.reshape(B, 15, 3),
                               p.right_hand_pose.reshape(B, 15, 3)], 1).reshape(B, -1)
        shape = torch.cat([p.betas.expand(B, -1), p.expression], -1)
        verts, joints = lbs(shape, full_pose, self.v_template, self.shapedirs, self.posedirs,
                            self.J_regressor, self.parents, self.lbs_weights, pose2rot=True)
        joints = torch.cat([joints, verts[:, self.extra_joint_vertices]], 1)
        t = p.transl[:, None]
        return verts + t, joints + t

    def joint_tree(self) -> tuple[list[str], np.ndarray]:
        """The 55 SMPL-X skeleton joints (``smplx.joint_names.JOINT_NAMES``) and their parents
        (the model file's ``kintree_table``; -1 at the pelvis)."""
        from smplx.joint_names import JOINT_NAMES

        return list(JOINT_NAMES[:NUM_JOINTS]), self.parents.cpu().numpy().astype(np.int64)

    def vertex_joint(self) -> np.ndarray:
        """(V,) int64: the joint with the largest skinning weight (``weights``) of every vertex."""
        return self.lbs_weights.argmax(1).cpu().numpy().astype(np.int64)

    def forward(self, params: BodyParams, return_vertices: bool = True) -> BodyOutput:
        p = params.expand_betas()
        B = p.batch_size
        verts, J = self._skin(p)
        pose = J[:, self.pose_ref] * self.pose_landmark_mask[None, :, None]
        hands = J[:, self.hand_ref]                                   # (B, 2, 21, 3)
        # head rotation = product of the rotations along the chain pelvis..head
        rots = torch.cat([p.global_orient[:, None], p.body_pose], 1)  # (B, 22, 3)
        R = torch.eye(3, device=J.device, dtype=J.dtype).expand(B, 3, 3)
        for j in _HEAD_CHAIN:
            R = R @ rotvec_to_rotmat(rots[:, j])
        head_T = torch.eye(4, device=J.device, dtype=J.dtype).repeat(B, 1, 1)
        head_T[:, :3, :3] = R
        head_T[:, :3, 3] = J[:, 15]
        return BodyOutput(vertices=verts if return_vertices else None,
                          pose_landmarks=pose, hand_landmarks=hands, head_transform=head_T)

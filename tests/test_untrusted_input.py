"""Subject folders are untrusted input: a crafted SMPL-X file named by a manifest runs no code.

Each crafted file holds a pickle whose ``__reduce__`` would create a marker file when unpickled
(the classic pickle code-execution payload, harmless here). Loading must raise a clear
:class:`ModelFileError` and the marker must not exist afterwards.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ram_avatar.body import load_body_model
from ram_avatar.cli import main
from ram_avatar.errors import ModelFileError


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"v_template": _Payload(marker)}))
    return path


def _npy_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a single pickled object array, named .npz
        np.save(f, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    return path


def _npz_object_member(path: Path, marker: Path, smplx_dir: Path) -> Path:
    """The synthetic SMPL-X arrays, with ``v_template`` replaced by a pickled object array."""
    arrays = dict(np.load(smplx_dir / "SMPLX_NEUTRAL.npz"))
    arrays["v_template"] = np.array([_Payload(marker)], dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


CRAFTED = {"pickle": _pickle_file, "npy": _npy_file}


@pytest.mark.parametrize("kind", ["pickle", "npy", "npz_object_member"])
def test_crafted_smplx_file_runs_no_code(tmp_path, smplx_dir, kind):
    marker = tmp_path / "PWNED"
    target = tmp_path / "models" / "SMPLX_NEUTRAL.npz"
    if kind == "npz_object_member":
        _npz_object_member(target, marker, smplx_dir)
    else:
        CRAFTED[kind](target, marker)
    # sanity: the payload does run when unpickled (so the test can fail)
    if kind == "pickle":
        pickle.loads(target.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(ModelFileError, match="SMPLX_NEUTRAL.npz"):
        load_body_model("smplx", model_path=target.parent)
    assert not marker.exists()


def test_real_layout_with_pickled_extras_loads_without_unpickling(tmp_path, smplx_dir):
    """Official SMPL-X files carry pickled ``joint2num``/``part2num`` members: they are left
    unread, the model loads, and the payload in them never runs."""
    marker = tmp_path / "PWNED"
    arrays = dict(np.load(smplx_dir / "SMPLX_NEUTRAL.npz"))
    arrays["joint2num"] = np.array([_Payload(marker)], dtype=object)
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **arrays)
    body = load_body_model("smplx", model_path=tmp_path)
    assert body(body.zero_params(1)).vertices.shape == (1, 10475, 3)
    assert not marker.exists()


def test_smplx_backend_matches_smplx_package(smplx_dir):
    """The array-built model poses exactly like ``smplx.SMPLX`` (given the trusted synthetic
    file), vertices and the 76 joints the landmark maps read."""
    import smplx

    body = load_body_model("smplx", model_path=smplx_dir)
    ref = smplx.SMPLX(str(smplx_dir / "SMPLX_NEUTRAL.npz"), num_betas=10,
                      num_expression_coeffs=10, use_pca=False, flat_hand_mean=True,
                      use_face_contour=False)
    torch.manual_seed(0)
    p = body.zero_params(3)
    p.betas = 0.5 * torch.randn(1, 10)
    p.body_pose = 0.4 * torch.randn_like(p.body_pose)
    p.left_hand_pose = 0.3 * torch.randn_like(p.left_hand_pose)
    p.right_hand_pose = 0.3 * torch.randn_like(p.right_hand_pose)
    p.jaw_pose = 0.2 * torch.randn_like(p.jaw_pose)
    p.expression = torch.randn_like(p.expression)
    p.transl = torch.randn_like(p.transl)
    verts, joints = body._skin(p.expand_betas())
    B = 3
    z = torch.zeros(B, 3)
    with torch.no_grad():
        out = ref(betas=p.betas.expand(B, -1), global_orient=p.global_orient,
                  body_pose=p.body_pose.reshape(B, -1), left_hand_pose=p.left_hand_pose.reshape(B, -1),
                  right_hand_pose=p.right_hand_pose.reshape(B, -1), jaw_pose=p.jaw_pose,
                  leye_pose=z, reye_pose=z, expression=p.expression, transl=p.transl)
    assert verts.shape == (3, 10475, 3) and joints.shape == (3, 76, 3)
    torch.testing.assert_close(verts, out.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(joints, out.joints[:, :76], atol=1e-5, rtol=0)


def _write_smplx_subject(subject: Path, model_path: Path) -> None:
    """A tiny captured subject (4 frames, 64x64) whose manifest names an SMPL-X model file."""
    from ram_avatar.capture.video import VideoWriter

    seq = subject / "sequence"
    seq.mkdir(parents=True)
    T = 4
    with VideoWriter(seq / "source.mp4", 10, (64, 64)) as w:
        for t in range(T):
            w.write(np.full((64, 64, 3), 40 * t, np.uint8))
    np.savez_compressed(seq / "masks.npz", masks=np.zeros((T, 64, 64), np.uint8))
    arrays = dict(betas=np.zeros((1, 10)), global_orient=np.zeros((T, 3)),
                  body_pose=np.zeros((T, 21, 3)), left_hand_pose=np.zeros((T, 15, 3)),
                  right_hand_pose=np.zeros((T, 15, 3)), jaw_pose=np.zeros((T, 3)),
                  expression=np.zeros((T, 10)), transl=np.tile([0, 0, 3.0], (T, 1)),
                  valid=np.ones(T, bool), face_local=np.zeros((T, 478, 3)))
    for name, n in (("pose", 33), ("left_hand", 21), ("right_hand", 21), ("face", 478)):
        arrays[f"kp_{name}"] = np.zeros((T, n, 3), np.float32)
        arrays[f"kp_{name}_valid"] = np.ones(T, bool)
    np.savez(seq / "fitted.npz", **arrays)
    manifest = {"version": 1, "fps": 10.0, "width": 64, "height": 64, "frames": T,
                "source": {"name": "x.mp4", "sha256": "0", "start": 0, "end": T, "frame_count": T},
                "camera": {"K": [[60, 0, 32], [0, 60, 32], [0, 0, 1]], "dist": [0] * 5,
                           "source": "default"},
                "body_model": {"name": "smplx", "num_betas": 10, "num_body_joints": 21,
                               "num_expression": 10, "model_path": str(model_path)},
                "crop": [0, 0, 64], "valid": [1] * T}
    (seq / "manifest.json").write_text(json.dumps(manifest))


def test_train_on_crafted_subject_runs_no_code(tmp_path, capsys):
    """`train` on a shared subject folder whose manifest names a crafted SMPL-X file."""
    from ram_avatar.io.sequence import load_sequence

    marker = tmp_path / "PWNED"
    subject = tmp_path / "shared_subject"
    crafted = _pickle_file(subject / "body" / "SMPLX_NEUTRAL.npz", marker)
    _write_smplx_subject(subject, crafted.parent)
    load_sequence(subject)  # the subject itself is well-formed
    code = main(["train", str(subject), "--steps", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "SMPL-X" in err and "pickled" in err
    assert not marker.exists()


def test_capture_with_crafted_model_runs_no_code(tmp_path, taiji_video, capsys):
    marker = tmp_path / "PWNED"
    crafted = _pickle_file(tmp_path / "m" / "SMPLX_NEUTRAL.npz", marker)
    code = main(["capture", str(taiji_video), "-o", str(tmp_path / "s"), "--end", "2",
                 "--body-model", "smplx", "--model-path", str(crafted.parent), "--device", "cpu"])
    assert code == 2 and "pickled" in capsys.readouterr().err
    assert not marker.exists()
    shutil.rmtree(tmp_path / "m")


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    cache = tmp_path / "model_cache"
    monkeypatch.setenv("RAM_AVATAR_MODELS", str(cache))
    return cache


def test_body_model_import_and_reference_by_hash(smplx_dir, model_cache, capsys):
    assert main(["body-model", "import", str(smplx_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["ref"] == "sha256:" + info["sha256"] and info["imported"]
    cached = model_cache / "smplx" / f"{info['sha256']}.npz"
    assert cached.is_file()
    with np.load(cached, allow_pickle=False) as z:             # numbers only in the cache
        assert all(z[k].dtype.kind in "biuf" for k in z.files)
    by_ref = load_body_model("smplx", model_path=info["ref"])
    by_path = load_body_model("smplx", model_path=smplx_dir)
    assert by_ref.model_ref == by_path.model_ref == info["ref"]
    p = by_ref.zero_params(1)
    assert torch.equal(by_ref(p).vertices, by_path(p).vertices)
    # importing again changes nothing
    assert main(["body-model", "import", str(smplx_dir / "SMPLX_NEUTRAL.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["imported"] is False


def test_unknown_or_tampered_reference_is_a_clear_error(smplx_dir, model_cache):
    from ram_avatar.body.smplx_backend import import_smplx_model

    with pytest.raises(ModelFileError, match="not in your model cache.*body-model import"):
        load_body_model("smplx", model_path="sha256:" + "0" * 64)
    with pytest.raises(ModelFileError, match="malformed"):
        load_body_model("smplx", model_path="sha256:../../etc/passwd")
    info = import_smplx_model(smplx_dir)
    arrays = dict(np.load(info["path"]))
    arrays["v_template"] = arrays["v_template"] + 0.01           # a damaged cache entry
    np.savez(info["path"], **arrays)
    with pytest.raises(ModelFileError, match="does not match its name"):
        load_body_model("smplx", model_path=info["ref"])


def test_import_of_crafted_file_runs_no_code(tmp_path, model_cache, capsys):
    marker = tmp_path / "PWNED"
    crafted = _pickle_file(tmp_path / "m" / "SMPLX_NEUTRAL.npz", marker)
    assert main(["body-model", "import", str(crafted)]) == 2
    assert "pickled" in capsys.readouterr().err
    assert not marker.exists() and not model_cache.exists()


def test_capture_names_the_model_by_hash(tmp_path, smplx_dir, model_cache, taiji_video, monkeypatch):
    """capture --model-path imports the file and hands the body loader (and so the manifest)
    only the sha256 reference, never the path."""
    from ram_avatar.capture import pipeline

    seen = {}

    class Stop(Exception):
        pass

    def loader(name, model_path=None, device="cpu"):
        seen.update(name=name, model_path=model_path)
        raise Stop

    monkeypatch.setattr(pipeline, "load_body_model", loader)
    with pytest.raises(Stop):
        pipeline.capture(taiji_video, tmp_path / "s", end=2, body_model="smplx",
                         model_path=smplx_dir, device="cpu")
    assert seen["name"] == "smplx" and seen["model_path"].startswith("sha256:")
    assert str(smplx_dir) not in seen["model_path"]
    assert (model_cache / "smplx" / (seen["model_path"][7:] + ".npz")).is_file()

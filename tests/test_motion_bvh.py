"""BVH reader (ram_avatar.motion.bvh): synthetic clip with known answers, a real Bandai-Namco
clip from ../shared/data/mocap when present, and malformed input."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from ram_avatar.motion.bvh import MocapFormatError, euler_to_matrix, read_bvh

ROOT = Path(__file__).resolve().parent.parent
#: shared mocap archive (Bandai-Namco-Research-Motiondataset, CC BY-NC 4.0; see its README)
MOCAP_TAR = ROOT.parent / "shared" / "data" / "mocap" / "bandai_namco_bvh.tar.xz"


def extract_bandai(names: list[str], dest: Path) -> list[Path]:
    """Extract the dataset-1 clips whose file names start with ``names`` from the shared archive
    (streaming: dataset-1 lies at the start of the archive, so this takes well under a second).
    Skips the calling test when the archive is absent."""
    if not MOCAP_TAR.is_file():
        pytest.skip(f"shared mocap archive not found at {MOCAP_TAR}")
    dest.mkdir(parents=True, exist_ok=True)
    want = {n: None for n in names}
    with tarfile.open(MOCAP_TAR, "r|xz") as tf:
        for m in tf:
            base = Path(m.name).name
            for n in want:
                if want[n] is None and base.startswith(n) and base.endswith(".bvh"):
                    out = dest / base
                    out.write_bytes(tf.extractfile(m).read())
                    want[n] = out
            if all(want.values()):
                break
    missing = [n for n, p in want.items() if p is None]
    assert not missing, f"clips {missing} not in {MOCAP_TAR}"
    return [want[n] for n in names]


SYNTH = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Spine
  {
    OFFSET 0 10 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    JOINT Head
    {
      OFFSET 0 20 0
      CHANNELS 3 Zrotation Xrotation Yrotation
      End Site
      {
        OFFSET 0 5 0
      }
    }
  }
  JOINT Leg
  {
    OFFSET 10 0 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 -80 0
    }
  }
}
MOTION
Frames: 3
Frame Time: 0.04
0 90 0 0 0 0   0 0 0   0 0 0   0 0 0
1 90 0 90 0 0  0 0 0   0 0 0   0 0 0
0 90 0 0 0 0   0 90 0  0 0 0   0 0 0
"""


def test_synthetic_bvh_parse_and_fk(tmp_path):
    f = tmp_path / "s.bvh"
    f.write_text(SYNTH)
    m = read_bvh(f)
    assert m.names == ["Hips", "Spine", "Head", "Leg"]
    assert list(m.parents) == [-1, 0, 1, 0]
    assert m.num_frames == 3 and m.rotations.shape == (3, 4, 3, 3) and m.translations.shape == (3, 4, 3)
    assert m.fps == pytest.approx(25.0)
    assert m.scale == pytest.approx(0.01)  # 90-unit tall figure: centimetres
    np.testing.assert_allclose(m.offsets[1], [0, 0.10, 0])
    np.testing.assert_allclose(m.end_sites["Head"], [0, 0.05, 0])
    np.testing.assert_allclose(m.end_sites["Leg"], [0, -0.80, 0])
    R, P = m.world()
    np.testing.assert_allclose(P[0, 2], [0, 1.20, 0], atol=1e-9)      # hips 0.9 + 0.1 + 0.2
    # frame 1: root rotated 90 deg about z: +y maps to -x; root moved 1 cm along x
    np.testing.assert_allclose(P[1, 2], [0.01 - 0.30, 0.90, 0], atol=1e-9)
    # frame 2: spine rotated 90 deg about x: the head offset (+y) maps to +z
    np.testing.assert_allclose(P[2, 2], [0, 1.00, 0.20], atol=1e-9)
    np.testing.assert_allclose(R[1, 0] @ R[1, 0].T, np.eye(3), atol=1e-12)


def test_euler_order_convention():
    # "ZXY": R = Rz @ Rx @ Ry
    R = euler_to_matrix(np.array([30.0, 40.0, 50.0]), "ZXY")
    a = np.radians([30.0, 40.0, 50.0])
    Rz = np.array([[np.cos(a[0]), -np.sin(a[0]), 0], [np.sin(a[0]), np.cos(a[0]), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, np.cos(a[1]), -np.sin(a[1])], [0, np.sin(a[1]), np.cos(a[1])]])
    Ry = np.array([[np.cos(a[2]), 0, np.sin(a[2])], [0, 1, 0], [-np.sin(a[2]), 0, np.cos(a[2])]])
    np.testing.assert_allclose(R, Rz @ Rx @ Ry, atol=1e-12)


def test_malformed_bvh(tmp_path):
    bad = tmp_path / "bad.bvh"
    bad.write_text("HIERARCHY\nROOT Hips\n{\n OFFSET 0 0 0\n}\n")
    with pytest.raises(MocapFormatError, match="MOTION"):
        read_bvh(bad)
    with pytest.raises(MocapFormatError, match="cannot read"):
        read_bvh(tmp_path / "missing.bvh")
    short = tmp_path / "short.bvh"
    short.write_text(SYNTH.split("MOTION")[0] + "MOTION\nFrames: 1\nFrame Time: 0.04\n")
    with pytest.raises(MocapFormatError, match="no motion data"):
        read_bvh(short)


def test_bandai_clip(tmp_path):
    (f,) = extract_bandai(["dataset-1_kick_normal_001"], tmp_path)
    m = read_bvh(f)
    assert m.num_joints == 22 and m.num_frames == 358       # 21 body joints + ground root
    assert m.fps == pytest.approx(30.0, abs=1e-3)
    assert m.scale == pytest.approx(0.01)
    # offsets in metres: thigh 39.08 cm, shin 40.99 cm
    assert np.linalg.norm(m.offsets[m.index("LowerLeg_L")]) == pytest.approx(0.3908, abs=1e-3)
    assert np.linalg.norm(m.offsets[m.index("Foot_L")]) == pytest.approx(0.4099, abs=1e-3)
    _, P = m.world()
    assert np.isfinite(P).all()
    # a standing person: head 1.2-1.9 m above the toes
    height = P[0, m.index("Head"), 1] - P[0, m.index("Toes_L"), 1]
    assert 1.1 < height < 1.9
    # bone lengths stay rigid over time
    d = np.linalg.norm(P[:, m.index("LowerLeg_L")] - P[:, m.index("UpperLeg_L")], axis=-1)
    assert np.ptp(d) < 1e-6

"""Outputs of ``drive`` for streamers (issue 13): videos with alpha, framing, motion files."""

from __future__ import annotations

import av
import numpy as np
import pytest

from ram_avatar.capture.video import AlphaVideoWriter


def _rgba_clip(T=6, H=48, W=64):
    """Frames with a transparent background, an opaque moving box and a half-transparent patch."""
    frames = []
    yy, xx = np.mgrid[0:H, 0:W]
    for t in range(T):
        f = np.zeros((H, W, 4), np.uint8)
        f[..., 0] = xx * 4
        f[..., 1] = yy * 5
        f[..., 2] = 40 * t
        f[10:40, 20 + t:50 + t, 3] = 255
        f[20:30, 4:14, 3] = 128
        frames.append(f)
    return np.stack(frames)


def decode_rgba(path) -> tuple[np.ndarray, av.video.stream.VideoStream]:
    """(T,H,W,4) uint8 frames of a video with alpha, decoded by PyAV (libvpx for VP9: FFmpeg's
    native vp9 decoder drops the alpha)."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        rate = st.average_rate
        if st.codec_context.name == "vp9":
            ctx = av.codec.CodecContext.create("libvpx-vp9", "r")
            out = [f for pkt in c.demux(st) for f in ctx.decode(pkt)]
        else:
            out = list(c.decode(st))
        fmt = out[0].format.name
        return np.stack([f.to_ndarray(format="rgba") for f in out]), (rate, fmt)


@pytest.mark.parametrize("suffix,pix_fmt,alpha_tol,rgb_tol", [
    (".webm", "yuva420p", 4, 6.0), (".mov", "yuva444p", 1, 2.0)])  # ProRes 4444 decodes to 12 bit
def test_alpha_video_roundtrip(tmp_path, suffix, pix_fmt, alpha_tol, rgb_tol):
    clip = _rgba_clip()
    path = tmp_path / f"clip{suffix}"
    with AlphaVideoWriter(path, 25, (64, 48)) as w:
        for f in clip:
            w.write(f)
    got, (rate, fmt) = decode_rgba(path)
    assert got.shape == clip.shape
    assert rate == 25
    assert fmt.startswith(pix_fmt)  # alpha decoded
    a_err = np.abs(got[..., 3].astype(int) - clip[..., 3])
    assert a_err.max() <= alpha_tol and a_err.mean() < 0.5
    assert (got[..., 3][clip[..., 3] == 0] <= alpha_tol).all()  # background transparent
    opaque = clip[..., 3] == 255
    assert np.abs(got[..., :3].astype(int) - clip[..., :3])[opaque].mean() < rgb_tol
    # the native vp9 decoder indeed loses the alpha (why decode_rgba picks libvpx)
    if suffix == ".webm":
        with av.open(str(path)) as c:
            assert next(iter(c.decode(video=0))).format.name == "yuv420p"


def test_alpha_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="webm"):
        AlphaVideoWriter(tmp_path / "x.mp4", 25, (64, 48))
    with AlphaVideoWriter(tmp_path / "x.webm", 25, (64, 48)) as w:
        with pytest.raises(ValueError, match="RGBA"):
            w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((48, 64, 4), np.uint8))
    # an exception inside the block leaves no file
    with pytest.raises(RuntimeError):
        with AlphaVideoWriter(tmp_path / "y.mov", 25, (64, 48)) as w:
            w.write(np.zeros((48, 64, 4), np.uint8))
            raise RuntimeError("stop")
    assert not (tmp_path / "y.mov").exists()


@pytest.fixture(scope="module")
def driven_motion(anny_body):
    """T frames of the Anny avatar in varied poses, in the camera frame."""
    import torch

    T = 5
    g = torch.Generator().manual_seed(0)
    p = anny_body.zero_params(T)
    p.body_pose = (torch.rand(p.body_pose.shape, generator=g) - 0.5) * 0.6
    p.left_hand_pose = (torch.rand(p.left_hand_pose.shape, generator=g) - 0.5) * 0.4
    p.global_orient = p.global_orient + (torch.rand(T, 3, generator=g) - 0.5) * 0.5
    p.transl = torch.tensor([[0.1, 0.2, 3.0]]) + torch.rand(T, 3, generator=g) * 0.2
    return p


def _fk_from_parsed(mocap) -> tuple[list[str], np.ndarray]:
    """World joint positions (T,J,3) from a BVH parsed by the ``bvh`` package (R = product of
    the channels' rotations in file order, degrees; offsets, root position channels)."""
    from scipy.spatial.transform import Rotation

    names = mocap.get_joints_names()
    idx = {n: i for i, n in enumerate(names)}
    T = mocap.nframes
    pos = np.zeros((T, len(names), 3))
    rot = np.zeros((T, len(names), 3, 3))
    for j, n in enumerate(names):
        chans = mocap.joint_channels(n)
        vals = np.array(mocap.frames_joint_channels(n, chans), float).reshape(T, len(chans))
        R = np.repeat(np.eye(3)[None], T, 0)
        local_t = np.array(mocap.joint_offset(n), float)[None].repeat(T, 0)
        for c, name in enumerate(chans):
            if name.endswith("position"):
                local_t[:, "XYZ".index(name[0])] = vals[:, c]
            else:
                R = R @ Rotation.from_euler(name[0].lower(), vals[:, c:c + 1], degrees=True).as_matrix()
        parent = mocap.joint_parent(n)
        if parent is None:
            rot[:, j], pos[:, j] = R, local_t
        else:
            p = idx[parent.name]
            rot[:, j] = rot[:, p] @ R
            pos[:, j] = pos[:, p] + np.einsum("tab,tb->ta", rot[:, p], local_t)
    return names, pos


def test_motion_npz_and_bvh_read_back_by_other_parsers(tmp_path, anny_body, driven_motion):
    import bvh

    from ram_avatar.motion.export import CAMERA_TO_BVH, write_motion

    fps = 23.976
    s_npz = write_motion(tmp_path / "m.npz", anny_body, driven_motion, fps)
    s_bvh = write_motion(tmp_path / "m.bvh", anny_body, driven_motion, fps)
    d = np.load(tmp_path / "m.npz")
    names, parents = anny_body.joint_tree()
    T, J = 5, len(names)
    assert d["joints"].shape == (T, J, 3) and list(d["joint_names"]) == names
    assert float(d["fps"]) == pytest.approx(fps)
    for k in ("betas", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose",
              "jaw_pose", "transl"):
        assert np.allclose(d[k], driven_motion.as_numpy()[k], atol=1e-6)
    # joints are in the camera frame: the pose landmarks (bone heads) of the same body agree
    head = names.index("head")
    assert np.all(d["joints"][:, :, 2] > 2.0)  # in front of the camera, metres
    import torch

    with torch.no_grad():
        out = anny_body(driven_motion, return_vertices=False)
    assert np.abs(d["joints"][:, head] - out.head_transform[:, :3, 3].numpy()).max() < 1e-5
    # BVH parsed by the `bvh` package (not ours): hierarchy, channels, frames, frame time
    mocap = bvh.Bvh((tmp_path / "m.bvh").read_text())
    assert mocap.get_joints_names() == names  # depth-first order == Anny's parent-first order
    for j, n in enumerate(names):
        parent = mocap.joint_parent(n)
        assert (parent.name if parent is not None else None) == (names[parents[j]] if parents[j] >= 0 else None)
    assert sum(len(mocap.joint_channels(n)) for n in names) == 6 + 3 * (J - 1) == s_bvh["channels"]
    assert mocap.nframes == T and mocap.frame_time == pytest.approx(1 / fps, abs=1e-7)
    # forward kinematics of the parsed file reproduces the avatar's joints (BVH frame: y up)
    _, fk = _fk_from_parsed(mocap)
    want = np.einsum("ab,tjb->tja", CAMERA_TO_BVH, d["joints"])
    err = np.linalg.norm(fk - want, axis=-1)
    assert err.max() < 2e-3, err.max()  # metres
    # the rest pose is upright: head above the feet (y up)
    rest = np.zeros((J, 3))
    for j, n in enumerate(names):
        if parents[j] >= 0:
            rest[j] = rest[parents[j]] + np.array(mocap.joint_offset(n))
    foot = [i for i, n in enumerate(names) if n.startswith("foot")][0]
    assert rest[head, 1] - rest[foot, 1] > 1.0
    assert s_npz["frames"] == T


def test_layout_rule():
    from pathlib import Path

    from ram_avatar.drive import choose_layout
    from ram_avatar.errors import RamAvatarError
    from ram_avatar.render.composite import parse_background

    learned, transparent, green = (parse_background(b) for b in ("learned", "transparent", "#00ff00"))
    assert choose_layout(None, Path("a.mp4"), learned, None) == "side-by-side"
    assert choose_layout(None, Path("a.mp4"), learned, "upper") == "avatar"
    assert choose_layout(None, Path("a.mp4"), green, None) == "avatar"
    assert choose_layout(None, Path("a.webm"), transparent, None) == "avatar"
    assert choose_layout(None, Path("a.webm"), learned, None) == "avatar"
    assert choose_layout("side-by-side", Path("a.mp4"), green, "head") == "side-by-side"
    with pytest.raises(RamAvatarError, match="webm"):
        choose_layout(None, Path("a.mp4"), transparent, None)
    with pytest.raises(RamAvatarError, match="side-by-side"):
        choose_layout("side-by-side", Path("a.mov"), transparent, None)


def test_avatar_composer_background_and_framing(tmp_path):
    """Rendered frames -> framed output in each background mode; transparent frames written
    to WebM keep alpha 0 around the avatar and 255 inside it."""
    from ram_avatar.render.framing import AvatarComposer
    from ram_avatar.render.composite import parse_background
    from test_framing import standing_landmarks

    S = 256
    learned = np.full((S, S, 3), (90, 60, 30), np.uint8)
    alpha = np.zeros((S, S), np.uint8)
    alpha[30:240, 100:156] = 255                 # the avatar's body (a box around the landmarks)
    fg = np.full((S, S, 3), (200, 180, 160), np.uint8)
    a = alpha[..., None] / 255.0
    rgb = (fg * a + learned * (1 - a) + 0.5).astype(np.uint8)
    lm, bbox = standing_landmarks(), (100, 30, 156, 240)
    out = {}
    for spec in ("learned", "transparent", "#00ff00"):
        comp = AvatarComposer(parse_background(spec), learned, "upper", out_size=(320, 180))
        out[spec] = comp(rgb, alpha, lm, bbox)
        assert comp.last_box is not None and comp.last_box[2] / comp.last_box[3] == pytest.approx(16 / 9)
    assert out["learned"].shape == (180, 320, 3) and out["transparent"].shape == (180, 320, 4)
    t = out["transparent"]
    assert t[5, 5, 3] == 0 and t[90, 160, 3] == 255            # corner clear, torso opaque
    assert np.abs(t[90, 160, :3].astype(int) - (200, 180, 160)).max() <= 2
    assert (out["#00ff00"][5, 5] == (0, 255, 0)).all()
    assert np.abs(out["#00ff00"][90, 160].astype(int) - (200, 180, 160)).max() <= 2
    assert np.abs(out["learned"][5, 5].astype(int) - (90, 60, 30)).max() <= 1  # edge repeated
    # without framing: the rendered square, re-composited
    comp = AvatarComposer(parse_background("#0000ff"), learned, None)
    sq = comp(rgb, alpha, None, bbox)
    assert sq.shape == (S, S, 3) and (sq[0, 0] == (0, 0, 255)).all()
    # transparent frames through the WebM writer and back
    path = tmp_path / "avatar.webm"
    with AlphaVideoWriter(path, 24, (320, 180)) as w:
        for _ in range(3):
            w.write(t)
    got, _ = decode_rgba(path)
    assert got[0, 5, 5, 3] <= 4 and got[0, 90, 160, 3] >= 251

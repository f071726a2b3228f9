"""Partial views in the live runtime (issue 13, item 1): held legs, lost person, identity gate.

The crop test drives the body fit of :class:`ram_avatar.runtime.tracking.BodyTracker` from the
full frame and from its head-to-waist crop (top 55%) of examples/taiji.mp4 and compares the
arms: shoulder-centred elbow and wrist positions of the fitted body, crop vs full frame, 14
frames (104..131, every 2nd), first 2 frames (initial fits) left out. The body has Anny's
neutral adult shape (``default_betas``, all phenotype values 0.5: 1.63 m, shoulders 31 cm).
Until 2026-12-03 this test used ``betas = 0``, which in Anny is a 46 cm infant: the fit then
placed the body at 0.9 m instead of 3.6 m, and every distance in centimetres came out about
3.5 times too small (the "6.1 cm" of stop 17 and the "2.9 cm" measured with it today).

Measured with the adult shape (``/work/exp/s28/crop.py``: the same comparison over longer clips
and other crops; 2026-12-04, arms = median 3D distance; "no cue" is ``depth_cue=0``, the fit
before MediaPipe's 3D pose was used, with the torso prior of 2026-12-03):

=================================  =================  ===============  =======================
clip, crop                          arms no cue -> cue  image plane cue  crop lean p10..p90 cue
=================================  =================  ===============  =======================
this clip, 55 %, stand / sit        13.7 / 11.0 ->     3.8 / 3.1 cm     -2.5..0.9 (stand;
                                    6.7 / 7.0 cm                         full frame -10.6..-5.3)
taiji 0-412, 55 %                   16.9 -> 4.6        2.1              -1.2..3.1
taiji 0-412, 42 % (no hips)         18.5 -> 9.9        4.2              -2.3..5.2
basketball 0-219, 55 %              19.0 -> 11.1       6.8              -1.9..5.5 (full -42..0)
basketball 0-219, head to waist     11.7 -> 5.6        2.0              (MediaPipe's own: 5.2)
(69 %: down to the lowest hip)
=================================  =================  ===============  =======================

The image plane is what the crop shows: MediaPipe's own 2D elbows and wrists differ by 1.6 cm
(taiji) between crop and full frame. The rest is depth, which 2D landmarks leave to the priors:
before the depth cue (:class:`~ram_avatar.runtime.tracking.LiveFitConfig` ``depth_cue``, the
camera-axis direction of each bone from MediaPipe's 3D pose, whose own arms agree within 4 cm
between crop and full frame on taiji) the crop's arms were 11-19 cm from the full frame's, and
the full frame leaned basketball's forward-bending player 36 deg backwards
(:func:`test_depth_cue_turns_the_torso_the_right_way`). Without hips (or with hips at the
crop's edge, which MediaPipe places too high) nothing in the frame fixes the torso's pitch:
the lean prior (``lean_prior``) holds it at the lean of the last frames with hips in view,
upright when there were none, and ``pelvis_prior`` holds the pelvis upright so the held legs
stay under the body. Where the person really bends towards the camera with the hips out of
view (basketball) the crop shows them upright; with the hands out of the crop as well, its
arms stay 11.1 cm from the full frame's. The tolerances below are this clip's measurement with
headroom: 10 cm in 3D (and at least 2 cm better than without the cue), 5 cm in the image
plane, and the torso lean within 12 deg (median) of the full frame's and steady
(frame-to-frame p95 <= 10 deg; before the lean prior: 27 / 26 deg). The legs of the crop are
held exactly (zero jitter) at the chosen pose.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from live_fixture import BASKETBALL, TAIJI, live_subject  # noqa: F401 - session fixture

from ram_avatar.capture.keypoints import Keypoints2D


def _kp(pose_xyv: np.ndarray) -> Keypoints2D:
    z = lambda n: np.zeros((1, n, 3), np.float32)  # noqa: E731
    return Keypoints2D(pose=pose_xyv[None].astype(np.float32), left_hand=z(21), right_hand=z(21),
                       face=z(478), face_valid=np.array([False]), pose_valid=np.array([True]),
                       left_hand_valid=np.array([False]), right_hand_valid=np.array([False]))


def _person(cx: float, cy: float, scale: float = 100.0) -> np.ndarray:
    """A standing stick figure (33 MediaPipe landmarks, visibility 1) centred at (cx, cy)."""
    p = np.zeros((33, 3))
    p[:, 2] = 1.0
    p[0, :2] = (0, -1.6)
    p[11, :2], p[12, :2] = (0.5, -1.2), (-0.5, -1.2)
    p[13, :2], p[14, :2] = (0.7, -0.6), (-0.7, -0.6)
    p[15, :2], p[16, :2] = (0.8, 0.0), (-0.8, 0.0)
    p[23, :2], p[24, :2] = (0.3, 0.0), (-0.3, 0.0)
    p[25, :2], p[26, :2] = (0.3, 1.0), (-0.3, 1.0)
    p[27:33, :2] = [(0.3, 2.0), (-0.3, 2.0), (0.3, 2.1), (-0.3, 2.1), (0.4, 2.1), (-0.4, 2.1)]
    p[:, :2] = p[:, :2] * scale + (cx, cy)
    return p


def test_landmarks_seen_uses_visibility_and_the_frame():
    from ram_avatar.runtime.tracking import landmarks_seen

    p = _person(320, 200)            # feet at y = 410: below a 640 x 360 frame
    p[13, 2] = 0.2                    # left elbow: low visibility
    seen = landmarks_seen(_kp(p), (640, 360), min_visibility=0.5)
    assert seen.shape == (33,)
    assert seen[[0, 11, 12, 14, 15, 16, 23, 24]].all()
    assert not seen[13]
    assert not seen[[27, 28, 29, 30, 31, 32]].any()     # outside the frame despite visibility 1
    assert seen[[25, 26]].all()                          # knees at y = 300 < 360
    assert landmarks_seen(_kp(p), (640, 360), 0.5, margin=0.2)[[27, 28]].all()


def test_identity_gate_refuses_a_jump_then_accepts_a_lasting_move():
    from ram_avatar.runtime.tracking import IdentityGate

    g = IdentityGate(jump_scale=1.5, refuse_frames=3)
    assert g(_kp(_person(300, 200))) == (True, True)
    for x in (305, 310, 316):                           # normal motion: accepted
        assert g(_kp(_person(x, 200))) == (True, False)
    assert g(_kp(_person(900, 200))) == (False, False)   # another person picked up: refused
    assert g(_kp(_person(320, 200))) == (True, False)    # back to the tracked one
    out = [g(_kp(_person(900 + i, 210))) for i in range(5)]
    assert out[:3] == [(False, False)] * 3                # refused for refuse_frames frames
    assert out[3] == (True, True)                         # a lasting move: tracking restarts
    assert out[4] == (True, False)


def test_blend_params_endpoints_and_midpoint():
    from ram_avatar.body.base import BodyParams
    from ram_avatar.runtime.avatar_runtime import blend_params

    def params(rot: float, t: float) -> BodyParams:
        bp = torch.zeros(1, 3, 3)
        bp[0, 1, 2] = rot
        return BodyParams(betas=torch.zeros(1, 2), global_orient=torch.zeros(1, 3), body_pose=bp,
                          left_hand_pose=torch.zeros(1, 15, 3), right_hand_pose=torch.zeros(1, 15, 3),
                          jaw_pose=torch.zeros(1, 3), expression=torch.zeros(1, 4),
                          transl=torch.tensor([[0.0, 0.0, t]]))

    a, b = params(0.2, 2.0), params(1.4, 3.0)
    assert torch.allclose(blend_params(a, b, 0.0).body_pose, a.body_pose, atol=1e-6)
    assert torch.allclose(blend_params(a, b, 1.0).body_pose, b.body_pose, atol=1e-6)
    mid = blend_params(a, b, 0.5)
    assert float(mid.body_pose[0, 1, 2]) == pytest.approx(0.8, abs=1e-5)   # same axis: angles lerp
    assert float(mid.transl[0, 2]) == pytest.approx(2.5)


@pytest.fixture(scope="module")
def anny():
    from ram_avatar.body import load_body_model

    return load_body_model("anny", device="cpu")


def test_seated_leg_pose_puts_thighs_forward_and_shins_down(anny):
    from ram_avatar.runtime.tracking import lower_body_joints, seated_leg_pose

    betas = anny.default_betas[None].clone()          # the neutral adult shape
    pose = seated_leg_pose(anny, betas)
    legs = lower_body_joints(anny)
    other = [j for j in range(anny.num_body_joints) if j not in legs]
    assert torch.count_nonzero(pose[other]) == 0
    p = anny.zero_params(1)
    with torch.no_grad():
        rest = anny(p, return_vertices=False).pose_landmarks[0]
        p.body_pose = pose[None]
        lm = anny(p, return_vertices=False).pose_landmarks[0]
    up = (rest[[23, 24]] - rest[[27, 28]]).mean(0)
    up = up / up.norm()
    for hip, knee, ankle in ((23, 25, 27), (24, 26, 28)):
        thigh = lm[knee] - lm[hip]
        shin = lm[ankle] - lm[knee]
        assert abs(float(thigh @ up / thigh.norm())) < 0.3          # thigh about horizontal
        assert float(-(shin @ up) / shin.norm()) > 0.8              # shin pointing down
    # the seated ankles are higher than the standing ones by about a thigh length
    assert float((lm[[27, 28]] - rest[[27, 28]]).mean(0) @ up) > 0.25


def _lean(lm: np.ndarray) -> float:
    """Torso pitch to the camera (degrees, + = top of the torso away from it) of (33, 3)
    camera-frame pose landmarks: the shoulder-to-hip "up" vector, made orthogonal to the
    shoulder line, in the camera's y-z plane."""
    x = lm[11] - lm[12]
    x = x / np.linalg.norm(x)
    up = 0.5 * (lm[11] + lm[12]) - 0.5 * (lm[23] + lm[24])
    up = up - x * (up @ x)
    up = up / np.linalg.norm(up)
    return float(np.degrees(np.arctan2(up[2], -up[1])))


ARMS_3D_CM = 10.0   # the crop test's tolerance (module docstring)


def _shoulder_centred_arms(lm: np.ndarray) -> np.ndarray:
    """Elbows and wrists (4, 3) of (33, 3) pose landmarks, relative to the shoulders' midpoint."""
    return lm[[13, 14, 15, 16]] - 0.5 * (lm[11] + lm[12])


def _arm_errors(full, crop):
    """Shoulder-centred elbow / wrist errors (cm): 3D and camera x-y, per frame (N, 4)."""
    e3, exy = [], []
    for a, b in zip(full, crop):
        da, db = _shoulder_centred_arms(a), _shoulder_centred_arms(b)
        e3.append(np.linalg.norm(da - db, axis=-1) * 100)
        exy.append(np.linalg.norm((da - db)[:, :2], axis=-1) * 100)
    return np.array(e3), np.array(exy)


@pytest.fixture(scope="module")
def crop_keypoints():
    """Holistic on the test clip (taiji 104..131, every 2nd): the full frames and their top
    55 %, with the camera and each view's frame size."""
    from ram_avatar.capture.video import iter_frames
    from ram_avatar.io.camera import default_intrinsics
    from ram_avatar.runtime.tracking import HolisticTracker

    frames = list(iter_frames(TAIJI, 104, 132))[::2]                         # 14 frames
    H, W = frames[0].shape[:2]
    hc = int(0.55 * H)
    views = {"full": (frames, (W, H)), "crop": ([np.ascontiguousarray(f[:hc]) for f in frames], (W, hc))}
    kps = {}
    for name, (imgs, _) in views.items():
        with HolisticTracker() as ht:
            kps[name] = [ht(img) for img in imgs]
    # the crop keeps the top rows: same camera, same pixels
    return kps, default_intrinsics(W, H), {name: size for name, (_, size) in views.items()}


def _drive(anny, kps, K, size, cfg, legs):
    """Fit every frame of one view: per frame None or (pose landmarks (33, 3) m, held leg
    rotations, the tracker's view dict)."""
    from ram_avatar.runtime.tracking import BodyTracker

    bt = BodyTracker(anny, anny.default_betas[None].clone(), cfg)   # the neutral adult shape
    res = []
    for kp in kps:
        p = bt(kp, K, size)
        if p is None:
            res.append(None)
            continue
        with torch.no_grad():
            lm = anny(p, return_vertices=False).pose_landmarks[0].numpy()
        res.append((lm, p.body_pose[0, legs].numpy().copy(), dict(bt.view)))
    return res


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stand", "sit"])
def test_head_to_waist_crop_drives_the_arms_and_holds_the_legs(anny, crop_keypoints, mode):
    from ram_avatar.runtime.tracking import LiveFitConfig, lower_body_joints, seated_leg_pose

    kps, K, sizes = crop_keypoints
    legs = lower_body_joints(anny)
    arms = {}
    for cue in (LiveFitConfig().depth_cue, 0.0):     # 0: the control, without the depth cue
        cfg = LiveFitConfig(lower_body=mode, depth_cue=cue)
        out = {name: _drive(anny, kps[name], K, sizes[name], cfg, legs) for name in kps}
        pairs = [(a, b) for a, b in zip(out["full"], out["crop"]) if a is not None and b is not None]
        assert len(pairs) >= 10
        e3, exy = _arm_errors([a[0] for a, _ in pairs[2:]], [b[0] for _, b in pairs[2:]])
        arms[cue] = np.median(e3)
        print(f"{mode}, depth cue {cue}: arms crop vs full, median 3D {np.median(e3):.1f} cm, "
              f"image plane {np.median(exy):.1f} cm")
        if cue == 0.0:
            continue
        crop = [b for _, b in pairs]
        assert all(v["legs_held"] and not v["legs_seen"] for _, _, v in crop)
        assert not any(v["legs_held"] for _, _, v in (a for a, _ in pairs))  # full frame: legs followed
        leg = np.stack([b[1] for b in crop])
        assert np.abs(np.diff(leg, axis=0)).max() == 0.0                    # no jitter at all
        want = (seated_leg_pose(anny, anny.default_betas[None]) if mode == "sit"
                else torch.zeros(anny.num_body_joints, 3))
        np.testing.assert_allclose(leg[0], want[legs].numpy(), atol=1e-6)
        assert np.median(exy) <= 5.0
        lean_full = np.array([_lean(a[0]) for a, _ in pairs[2:]])
        lean_crop = np.array([_lean(b[0]) for _, b in pairs[2:]])
        print(f"{mode}: torso lean |crop - full| median {np.median(np.abs(lean_crop - lean_full)):.1f} deg, "
              f"crop frame-to-frame p95 {np.percentile(np.abs(np.diff(lean_crop)), 95):.1f} deg")
        assert np.median(np.abs(lean_crop - lean_full)) <= 12.0
        assert np.percentile(np.abs(np.diff(lean_crop)), 95) <= 10.0
    cue = LiveFitConfig().depth_cue
    assert arms[cue] <= ARMS_3D_CM and arms[cue] < arms[0.0] - 2.0


@pytest.mark.slow
def test_depth_cue_turns_the_torso_the_right_way(anny):
    """The full frame's torso, seen in 2D only, can lean towards or away from the camera: on
    basketball (frames 0..72, every 6th) the player bends 30-50 deg towards the camera, and
    MediaPipe's 3D pose says so (median -37 deg). Without the depth cue the fit, started
    upright on frame 0, leaned him back (measured 2026-12-04: median +47 deg); with it
    forward (median -35)."""
    from ram_avatar.capture.video import iter_frames
    from ram_avatar.io.camera import default_intrinsics
    from ram_avatar.runtime.tracking import BodyTracker, HolisticTracker, LiveFitConfig

    frames = list(iter_frames(BASKETBALL, 0, 73))[::6]
    H, W = frames[0].shape[:2]
    K = default_intrinsics(W, H)
    with HolisticTracker() as ht:
        kps = [ht(f) for f in frames]
    assert all(kp.has_world[0] for kp in kps)
    world = np.median([_lean(kp.pose_world[0]) for kp in kps])
    lean = {}
    assert LiveFitConfig().depth_cue == 1.0                # the default is what is measured
    for cue in (1.0, 0.0):
        bt = BodyTracker(anny, anny.default_betas[None].clone(), LiveFitConfig(depth_cue=cue))
        got = []
        for kp in kps:
            p = bt(kp, K, (W, H))
            with torch.no_grad():
                got.append(_lean(anny(p, return_vertices=False).pose_landmarks[0].numpy()))
        lean[cue] = np.median(got[1:])
    print(f"torso lean median: 3D pose {world:.1f}, fit with the cue {lean[1.0]:.1f}, "
          f"without {lean[0.0]:.1f} deg")
    assert world < -20.0                                  # towards the camera
    assert lean[1.0] < -20.0 and abs(lean[1.0] - world) < 15.0
    assert lean[0.0] > 20.0                               # the control: leaned the wrong way


@pytest.mark.slow
def test_torso_stays_upright_without_hips(anny):
    """A desk webcam never sees the hips (the top 42 % of taiji, frames 0..119, every 2nd):
    with the torso prior the torso stays within 20 deg of upright and steady, and the pelvis
    upright; without it (the control, ``lean_prior=0, pelvis_prior=0``) the torso leans back
    by tens of degrees and the pelvis tilts (measured 2026-12-03: lean median -51 deg, pelvis
    tilt p90 70 deg; with the prior max |lean| 9.3, frame-to-frame p95 2.3, pelvis p90 0.1.
    With the depth cue, 2026-12-04: without the prior -45 deg and 48 deg; with it 3.3, 2.3,
    0.0)."""
    from ram_avatar.capture.video import iter_frames
    from ram_avatar.io.camera import default_intrinsics
    from ram_avatar.body.base import rotvec_to_rotmat
    from ram_avatar.runtime.tracking import BodyTracker, HolisticTracker, LiveFitConfig

    frames = list(iter_frames(TAIJI, 0, 120))[::2]
    H, W = frames[0].shape[:2]
    hc = int(0.42 * H)
    K = default_intrinsics(W, H)
    ht = HolisticTracker()
    kps = [ht(np.ascontiguousarray(f[:hc])) for f in frames]
    ht.close()
    R0 = rotvec_to_rotmat(anny.upright_orient.float().reshape(1, 3))[0]
    up_model = R0.T @ torch.tensor([0.0, -1.0, 0.0])     # the body's up in its model frame
    leans, tilts = {}, {}
    for w in (0.0, LiveFitConfig().lean_prior):      # 0: the control, no torso prior at all
        cfg = LiveFitConfig() if w else LiveFitConfig(lean_prior=0.0, pelvis_prior=0.0)
        bt = BodyTracker(anny, anny.default_betas[None].clone(), cfg)
        got, tilt = [], []
        for kp in kps:
            p = bt(kp, K, (W, hc))
            assert p is not None and not bt.view["hips_seen"] and bt.view["legs_held"]
            with torch.no_grad():
                got.append(_lean(anny(p, return_vertices=False).pose_landmarks[0].numpy()))
            up = rotvec_to_rotmat(p.global_orient.float())[0] @ up_model
            tilt.append(float(np.degrees(np.arccos(np.clip(-float(up[1]), -1, 1)))))
        leans[w], tilts[w] = np.array(got[2:]), np.array(tilt[2:])
    w = LiveFitConfig().lean_prior
    with_prior, control = leans[w], leans[0.0]
    print(f"lean with the prior: max |.| {np.abs(with_prior).max():.1f}, frame-to-frame p95 "
          f"{np.percentile(np.abs(np.diff(with_prior)), 95):.1f}; without: median {np.median(control):.1f}; "
          f"pelvis tilt from upright: p90 {np.percentile(tilts[w], 90):.1f} (without "
          f"{np.percentile(tilts[0.0], 90):.1f})")
    assert np.abs(with_prior).max() <= 20.0
    assert np.percentile(np.abs(np.diff(with_prior)), 95) <= 6.0
    assert np.abs(np.median(control)) > 30.0          # the control: the prior is what holds it
    # the held legs stay under the body: the pelvis stays upright, where without the prior it
    # pitches and rolls with the shoulders
    assert np.percentile(tilts[w], 90) <= 10.0 < np.percentile(tilts[0.0], 90)


@pytest.mark.slow
def test_head_to_waist_crop_of_a_bending_player_keeps_the_arms(anny):
    """Basketball (all 219 frames) in a head-to-waist framing: a fixed crop from the top of the
    frame down to the lowest hip landmark of the full-frame track, so the waist is in view in
    every frame, as at a desk (69 % of this frame's height; the fixed top 55 % of the module
    docstring cuts his hips in 83 % of the frames and half his hands).

    The crop's elbows and wrists stay within 1 cm of MediaPipe's own 3D pose's agreement
    between the two views: the fit adds little to its tracker's disagreement, which is the
    floor of this comparison. Measured 2026-12-04 (``/work/exp/s30/crop.py``): arms 3D median
    5.6 cm (MediaPipe's 3D pose: 5.2), image plane 2.0 cm. With the crop's bottom 3 % / 6 %
    of the frame height lower: 5.1 / 4.4 cm (MediaPipe: 4.5 / 4.0). The depth cue's weight
    hardly moves it (0.3: 5.8, 3: 5.5 cm); without the cue (the control) 11.7 cm.
    """
    from ram_avatar.capture.video import iter_frames
    from ram_avatar.io.camera import default_intrinsics
    from ram_avatar.runtime.tracking import HolisticTracker, LiveFitConfig

    frames = list(iter_frames(BASKETBALL, 0, 219))
    H, W = frames[0].shape[:2]
    K = default_intrinsics(W, H)
    with HolisticTracker() as ht:
        full = [ht(f) for f in frames]
    hips = [float(kp.pose[0, [23, 24], 1].max()) for kp in full if kp.pose_valid[0]]
    hc = int(np.ceil(max(hips)))
    assert 0.6 * H < hc < 0.8 * H
    with HolisticTracker() as ht:
        crop = [ht(np.ascontiguousarray(f[:hc])) for f in frames]
    arms = {}
    for cue in (LiveFitConfig().depth_cue, 0.0):     # 0: the control, without the depth cue
        cfg = LiveFitConfig(depth_cue=cue)
        fits = [_drive(anny, kps, K, size, cfg, []) for kps, size in ((full, (W, H)),
                                                                       (crop, (W, hc)))]
        pairs = [(a[0], b[0]) for a, b in zip(*fits) if a is not None and b is not None][2:]
        assert len(pairs) >= 200
        arms[cue] = _arm_errors([a for a, _ in pairs], [b for _, b in pairs])
    e3, exy = arms[LiveFitConfig().depth_cue]
    control = float(np.median(arms[0.0][0]))
    world = [np.linalg.norm(_shoulder_centred_arms(a.pose_world[0])
                            - _shoulder_centred_arms(b.pose_world[0]), axis=-1) * 100
             for a, b in zip(full[2:], crop[2:]) if a.has_world[0] and b.has_world[0]]
    mp = float(np.median(world))
    print(f"head-to-waist crop ({hc}/{H} rows): arms 3D median {np.median(e3):.1f} cm, image "
          f"plane {np.median(exy):.1f} cm; MediaPipe's 3D pose, crop vs full: {mp:.1f} cm; "
          f"without the depth cue {control:.1f} cm")
    assert np.median(exy) <= 3.0
    assert np.median(e3) <= min(mp + 1.0, 6.5) < control


def test_runtime_holds_then_eases_to_rest(live_subject):  # noqa: F811
    from ram_avatar.capture.video import iter_frames
    from ram_avatar.runtime import AvatarRuntime

    frames = list(iter_frames(TAIJI, 104, 106))
    blank = np.zeros_like(frames[0])
    with AvatarRuntime(live_subject, device="cpu", hold_s=1.0, ease_s=1.0) as rt:
        for i, f in enumerate(frames):
            rt.process(f, timestamp=10.0 + 0.04 * i)
        last = rt.last.extra["target"]
        rest = rt.retargeter.rest
        shown = {}
        for ts in (10.5, 11.0, 11.6, 12.6, 13.0):       # lost from 10.5 s on
            img, st = rt.process(blank, timestamp=ts)
            assert not st["person"]
            shown[ts] = (rt.last.extra["target"], rt.last.extra["ease"], img)
    d = lambda p, q: float((p.body_pose - q.body_pose).abs().max())  # noqa: E731
    assert d(shown[10.5][0], last) == 0 and shown[10.5][1] == 0.0      # held
    assert np.array_equal(shown[10.5][2], shown[11.0][2])              # held exactly still
    assert 0.0 < shown[11.6][1] < 1.0                                  # easing
    assert d(shown[11.6][0], last) > 0 and d(shown[11.6][0], rest) > 0
    assert shown[12.6][1] == 1.0 and d(shown[12.6][0], rest) < 1e-5    # at rest
    assert torch.allclose(shown[13.0][0].transl, rest.transl, atol=1e-6)

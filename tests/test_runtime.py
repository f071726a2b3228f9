"""Live runtime (issue 5): per-frame pipeline, torch/ONNX parity, streaming retargeting, errors.

Uses the tiny subject of tests/live_fixture.py (20 captured frames, 4 training steps).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from live_fixture import TAIJI, live_subject  # noqa: F401 - session fixture

from ram_avatar.errors import RamAvatarError

#: stated tolerance of torch vs ONNX Runtime on the same conditioning maps (float RGB in [0, 1])
PARITY_ATOL = 1e-4


def _frames(start: int, count: int) -> list[np.ndarray]:
    from ram_avatar.capture.video import iter_frames

    return list(iter_frames(TAIJI, start, start + count))


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    blank = np.zeros((720, 1280, 3), np.uint8)
    return [blank] + _frames(104, 3) + [blank]


def _run(rt, frames):
    outs, stats = [], []
    for f in frames:
        img, st = rt.process(f)
        outs.append(img)
        stats.append(st)
    return outs, stats


def test_runtime_process_and_torch_onnx_parity(live_subject, frames):  # noqa: F811
    from ram_avatar.runtime import STAGES, AvatarRuntime
    from ram_avatar.runtime.avatar_runtime import TorchRenderer

    with AvatarRuntime(live_subject, backend="onnx", device="cpu") as rt:
        S = rt.resolution
        assert S == json.loads((live_subject / "export" / "export.json").read_text())["resolution"]
        # no motion aligner fitted: skipped gracefully, cannot be switched on
        assert not rt.mda_available and "fit-mda" in rt.mda_status
        assert rt.set_mda(True) is False and rt.mda_enabled is False
        outs, stats = _run(rt, frames)
        maps = rt.last_maps
        onnx_rgb = rt.engine(maps)
    for img, st in zip(outs, stats):
        assert img.shape == (S, S, 3) and img.dtype == np.uint8
        assert img.std() > 1.0                               # the avatar is drawn, not a flat image
        assert set(STAGES) | {"total"} <= set(st)
        assert all(st[k] >= 0 for k in STAGES)
        assert st["total"] == pytest.approx(sum(st[k] for k in STAGES), rel=1e-6, abs=1e-3)
    # frame 0: nobody yet -> the avatar's rest pose; 1: full fit; 2-3: warm-started; 4: lost -> hold
    assert [s["person"] for s in stats] == [False, True, True, True, False]
    assert [s["full_fit"] for s in stats] == [False, True, False, False, False]
    assert np.array_equal(outs[4], outs[3])                # last pose kept while nobody is seen

    # parity 1: the same conditioning maps through torch (the run's checkpoint) and ONNX Runtime
    torch_engine = TorchRenderer(live_subject, "default", torch.device("cpu"))
    torch_rgb = torch_engine(maps)
    assert np.abs(torch_rgb - onnx_rgb).max() < PARITY_ATOL
    # parity 2: the whole pipeline with the torch backend (tracking and fit are deterministic)
    with AvatarRuntime(live_subject, backend="torch", device="cpu") as rt_t:
        outs_t, _ = _run(rt_t, frames)
    for a, b in zip(outs, outs_t):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_live_retargeter_keeps_avatar_framed(live_subject, anny_body):  # noqa: F811
    from dataclasses import replace

    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.runtime import LiveRetargeter
    from ram_avatar.runtime.retarget import FOOT_LANDMARKS

    seq = load_sequence(live_subject)
    rt = LiveRetargeter(anny_body, seq.params, seq.face_local)
    drv = seq.params.index(torch.arange(3, 4))
    far = replace(drv, transl=drv.transl + torch.tensor([[1.5, 0.0, 2.0]]))  # driver elsewhere
    with torch.no_grad():
        lm = anny_body(far, return_vertices=False).pose_landmarks[0]
    out, face, _ = rt(far, lm, None)
    # first frame: the avatar stands at its median training position, feet on its ground
    assert torch.allclose(out.transl[0, [0, 2]], rt.center[[0, 2]], atol=1e-5)
    assert torch.equal(out.betas, seq.params.betas)
    assert torch.equal(out.body_pose, far.body_pose)
    with torch.no_grad():
        lm_out = anny_body(out, return_vertices=False).pose_landmarks[0]
    assert float(lm_out[FOOT_LANDMARKS, 1].max()) == pytest.approx(rt.ground, abs=1e-4)
    assert np.allclose(face, rt.face_base)                 # no driver face -> the avatar's own
    # the driver steps 0.2 m right: the avatar follows the displacement from the running median
    step = replace(far, transl=far.transl + torch.tensor([[0.2, 0.0, 0.0]]))
    out2, _, _ = rt(step, lm + torch.tensor([0.2, 0.0, 0.0]), None)
    assert float(out2.transl[0, 0] - out.transl[0, 0]) == pytest.approx(0.1, abs=1e-4)  # median of 2


def test_renderer_engine_errors(live_subject, tmp_path):  # noqa: F811
    from ram_avatar.runtime.avatar_runtime import load_renderer_engine

    with pytest.raises(RamAvatarError, match="resolution 512"):
        load_renderer_engine(live_subject, "onnx", "cpu", resolution=512)
    with pytest.raises(RamAvatarError, match="unknown renderer backend 'jax'.*'openvino'"):
        load_renderer_engine(live_subject, "jax", "cpu")
    with pytest.raises(RamAvatarError, match="TensorRT|CUDA|cuda"):
        load_renderer_engine(live_subject, "tensorrt", "cpu")
    bare = tmp_path / "bare"
    shutil.copytree(live_subject / "sequence", bare / "sequence")
    with pytest.raises(RamAvatarError, match="ram-avatar export"):
        load_renderer_engine(bare, "onnx", "cpu")
    with pytest.raises(RamAvatarError, match="ram-avatar train"):
        load_renderer_engine(bare, "torch", "cpu")


def test_tensorrt_import_is_guarded():
    from ram_avatar.runtime import trt

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(RamAvatarError, match="pip install"):
            trt.import_tensorrt()
        assert trt.tensorrt_available() is False


def test_bench_live_smoke(live_subject):  # noqa: F811
    """The benchmark runs and reports every stage (no timing assertions: see `ram-avatar bench`)."""
    from ram_avatar.bench import bench_live
    from ram_avatar.runtime import STAGES

    rep = bench_live(live_subject, resolution=256, device="cpu", backend="onnx", frames=2, warmup=1)
    r = rep["results"]["256"]
    assert r["renderer"] == "subject" and r["timed_frames"] == 2 and r["fps"] > 0
    assert set(r["stages_ms"]) == set(STAGES)
    assert r["output_shape"] == [256, 256, 3] and rep["output"] is None
    # the process's CPU time over the timed frames, and the host's reference time around the run
    # (os.times counts in 10 ms ticks: over two short frames that may add a few % of the cores)
    assert r["cpu_ms_per_frame"] > 0 and 0 < r["cpu_utilisation"] <= 1.05
    assert rep["machine"]["reference_ms"]["before"] > 0 and rep["machine"]["reference_ms"]["after"] > 0
    json.dumps(rep)


def test_bench_live_times_the_output_composition(live_subject):  # noqa: F811
    """``bench live --framing upper --background transparent``: the frames it times are the
    framed RGBA frames ``live`` would show (both the pipelined and the sequential path)."""
    from ram_avatar.bench import bench_live
    from ram_avatar.render.framing import OutputSettings

    out = OutputSettings.parse("transparent", "upper", 1.2, "0,0", "320x180")
    for pipelined in (True, False):
        rep = bench_live(live_subject, resolution=256, device="cpu", backend="onnx", frames=2,
                         warmup=1, pipelined=pipelined, output=out)
        r = rep["results"]["256"]
        assert r["timed_frames"] == 2 and r["output_shape"] == [180, 320, 4], r
        assert rep["output"] == {"background": "transparent", "framing": "upper", "zoom": 1.2,
                                 "out_size": [320, 180]}


def test_runtime_feeds_full_renderer_extra_maps(live_subject):  # noqa: F811
    """A full-variant renderer (dual attention + branches) gets its expanded-mesh and
    previous-frame maps from the runtime."""
    from ram_avatar.models.renderer import AvatarRenderer, RendererConfig
    from ram_avatar.runtime import AvatarRuntime
    from ram_avatar.runtime.avatar_runtime import TorchRenderer

    if "variant" not in RendererConfig.__dataclass_fields__:
        pytest.skip("this renderer version has no full variant")
    torch.manual_seed(0)
    cfg = RendererConfig(resolution=128, variant="full", texture_channels=8, texture_size=64,
                         base_channels=8, max_channels=16, style_dim=16, latent_dim=8,
                         attention_channels=8, branch_channels=4, branch_hidden=4)
    engine = TorchRenderer.from_model(AvatarRenderer(cfg), "cpu")
    assert {"uv_expanded", "prev_uv"} <= set(engine.input_names)
    with AvatarRuntime(live_subject, engine=engine, device="cpu") as rt:
        img0, _ = rt.process(_frames(104, 1)[0])
        first = {k: v.clone() for k, v in rt.last_maps.items()}
        img1, _ = rt.process(_frames(110, 1)[0])
        maps = rt.last_maps
    assert img0.shape == img1.shape == (128, 128, 3)
    for name in engine.input_names:
        assert maps[name].shape[-2:] == (128, 128), name
    assert torch.equal(first["prev_uv"], first["uv"])        # first frame: its own maps
    assert torch.equal(maps["prev_uv"], first["uv"])         # then the previous frame's
    assert maps["body_mask_expanded"].sum() > maps["body_mask"].sum()


# the runtime's import boundaries are import-linter contracts (pyproject.toml,
# tests/test_import_contracts.py)


# --------------------------------------------------------------------------------------------
# per-frame fit: Gauss-Newton (analytic Jacobian) vs Adam


def test_gauss_newton_jacobian_matches_autograd(live_subject, anny_body):  # noqa: F811
    """The analytic landmark Jacobian of the live fit equals autograd's through the same model."""
    from ram_avatar.capture.fitting import FitConfig
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.runtime.tracking import GaussNewtonFit

    seq = load_sequence(live_subject)
    gn = GaussNewtonFit(anny_body, seq.params.betas, FitConfig(), torch.device("cpu"))
    p = seq.params.index(torch.arange(5, 6))
    g = torch.Generator().manual_seed(0)
    p.body_pose = p.body_pose + 0.2 * torch.randn(p.body_pose.shape, generator=g)
    p.left_hand_pose = p.left_hand_pose + 0.3 * torch.randn(p.left_hand_pose.shape, generator=g)
    p.right_hand_pose = p.right_hand_pose + 0.3 * torch.randn(p.right_hand_pose.shape, generator=g)
    K = torch.as_tensor(seq.K, dtype=torch.float32)
    gn.fit(seq.keypoints.subset(slice(5, 6)), K, p, iters=0)  # sets the frame's targets only
    x = gn.pack(p)
    J, _ = gn._jacobian(gn._evaluate(x))                                  # (75, 2, 201)
    J_ref = torch.autograd.functional.jacobian(lambda v: gn._evaluate(v).r, x)
    assert J.shape == J_ref.shape == (75, 2, 6 + 3 * (anny_body.num_body_joints + 30))
    assert J_ref.abs().max() > 0.1
    assert (J - J_ref).abs().max() < 1e-3 * J_ref.abs().max()
    # the prior / limit / temporal gradient too
    gn._set_temporal(0.01, 10.0, root_weight=3.0)
    gn._x_pred = x + 0.05
    x_req = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(gn._prior_energy(x_req), x_req)
    g, H = gn._prior_grad_hess(x)
    assert torch.allclose(g, g_ref, atol=1e-5)
    assert g_ref[:3].abs().min() > 0  # the temporal term reaches the translation
    # its Hessian: the exact one of the quadratic terms, block diagonal over the joints (the
    # limits' Gauss-Newton part is only checked where no joint is past its limit)
    H_ref = torch.autograd.functional.hessian(gn._prior_energy, x)
    beyond = (x[6:].reshape(-1, 3).norm(dim=-1) > gn._lim).repeat_interleave(3)
    keep = torch.cat([torch.ones(6, dtype=torch.bool), ~beyond])
    assert keep.sum() > 100 and torch.allclose(H[keep][:, keep], H_ref[keep][:, keep], atol=1e-4)
    # the torso prior's rows (frames without hips): analytic equals autograd; its second
    # residual (the torso turned > 60 deg from the body's image "down") tested active too
    gn._lean_w, gn._lean_target = 10.0, 0.1
    gn._up_target, gn._up_w = torch.tensor([0.0, -0.96, 0.28]), 30.0   # the pelvis: its up to hold
    for down in ([0.0, 1.0, 0.0], [0.0, -1.0, 0.0]):
        gn._down = torch.tensor(down)
        _, J_t = gn._jacobian(gn._evaluate(x))
        ref = torch.autograd.functional.jacobian(
            lambda v: (lambda st: gn._torso_residuals(st.lm_world, st.Rg))(gn._evaluate(v)), x)
        assert J_t.shape == ref.shape == (5, gn.n) and ref[0].abs().max() > 0.05
        assert ref[2:, 3:6].abs().max() > 0.1                # the pelvis rows reach the orientation
        assert (J_t - ref).abs().max() < 1e-3 * ref.abs().max()
        st = gn._evaluate(x)
        r_t = gn._torso_residuals(st.lm_world, st.Rg)
        assert (r_t[1] > 0) == (down[1] < 0)           # upright torso: only the flipped "down" is violated
        e_t = gn._evaluate(x).prior - gn._prior_energy(x)             # the terms are in the energy
        assert torch.allclose(e_t, 10.0 * (r_t[:2] ** 2).sum() + 30.0 * (r_t[2:] ** 2).sum())
    # the depth cue's rows (after the torso prior's), analytic equals autograd
    gn._cue_w = torch.tensor([3.0, 2.0, 0.0, 1.0, 1.0, 2.0, 1.0, 0.5, 1.0])
    gn._cue_t = torch.tensor([-0.9, 0.3, -0.2, 0.0, 0.5, 0.1, 0.2, -0.1, 0.0])
    st = gn._evaluate(x)
    _, J_x = gn._jacobian(st)
    ref = torch.autograd.functional.jacobian(
        lambda v: (lambda s: gn._extra_residuals(s.lm_world, s.Rg)[0])(gn._evaluate(v)), x)
    assert J_x.shape == ref.shape == (14, gn.n) and ref[5:, 6:].abs().max() > 0.1
    assert (J_x - ref).abs().max() < 1e-3 * ref.abs().max()
    r_x, w_x = gn._extra_residuals(st.lm_world, st.Rg)
    assert torch.equal(w_x[5:], gn._cue_w) and r_x[5:].abs().max() > 0.05
    assert torch.allclose(st.prior - gn._prior_energy(x), (w_x * r_x ** 2).sum())


def test_live_fit_gauss_newton_beats_adam(live_subject, anny_body):  # noqa: F811
    """On the captured frames (sequential, warm-started), the Gauss-Newton fit reprojects at
    least as well as the Adam fit, and its landmarks are those of the body model."""
    from ram_avatar.capture.fitting import reprojection_errors
    from ram_avatar.io.sequence import load_sequence
    from ram_avatar.runtime.tracking import BodyTracker, LiveFitConfig

    seq = load_sequence(live_subject)
    K = torch.as_tensor(seq.K, dtype=torch.float32)
    errors = {}
    for method in ("gauss-newton", "adam"):
        tr = BodyTracker(anny_body, seq.params.betas, LiveFitConfig(method=method))
        assert tr.method == method
        err = {"body": [], "hands": []}
        for t in range(seq.num_frames):
            kp = seq.keypoints.subset(slice(t, t + 1))
            p = tr(kp, seq.K)
            assert p is not None and p.body_pose.shape == (1, anny_body.num_body_joints, 3)
            assert torch.equal(p.betas, seq.params.betas)
            if t == 0:
                assert tr.last_was_init
                continue
            e = reprojection_errors(anny_body, p, kp, K)
            for k in err:
                err[k].append(float(e[k][0]))
            if method == "gauss-newton":
                with torch.no_grad():
                    ref = anny_body(p, return_vertices=False)
                out = tr.last_output
                assert out is not None and out.vertices is None
                m = anny_body.pose_landmark_mask
                assert torch.allclose(out.pose_landmarks[:, m], ref.pose_landmarks[:, m], atol=1e-4)
                assert (out.pose_landmarks[:, ~m] == 0).all()  # BodyOutput: undefined rows are 0
                for name in ("hand_landmarks", "head_transform"):
                    assert torch.allclose(getattr(out, name), getattr(ref, name), atol=1e-4), name
            else:
                assert tr.last_output is None
        errors[method] = {k: float(np.nanmedian(v)) for k, v in err.items()}
    gn, adam = errors["gauss-newton"], errors["adam"]
    assert gn["body"] < 0.005, errors
    assert gn["body"] <= adam["body"] and gn["hands"] <= 1.1 * adam["hands"], errors


def test_cli_bench_live_stdout_is_json(live_subject):  # noqa: F811
    """`ram-avatar bench live ... | python -m json.tool` works: stdout carries the JSON only
    (NVIDIA Warp, which anny initialises, prints a banner on stdout unless silenced)."""
    import subprocess
    import sys

    S = json.loads((live_subject / "export" / "export.json").read_text())["resolution"]
    proc = subprocess.run(
        [sys.executable, "-m", "ram_avatar.cli", "bench", "live", str(live_subject), "--frames", "2",
         "--resolution", str(S), "--device", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout)  # the whole of stdout
    r = rep["results"][str(S)]
    assert r["timed_frames"] == 2 and r["fps"] > 0 and r["fit_method"] == "gauss-newton"
    assert "Warp" not in proc.stdout

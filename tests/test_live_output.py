"""Live output (issue 13): framing and background of the live runtime, camera zoom, sinks.

* camera zoom (``zoom_mode="camera"``) shows the same part of the scene as crop + upscale: a
  smooth synthetic "renderer" drawn in the training crop and in the closer camera's view gives
  the same framed output, learned background included (the renderer paints that one at fixed
  pixels; the composer swaps in the view of it);
* OutputSettings validation, letterboxing, the virtual camera's keyed frame;
* the real runtime on a tiny trained subject: transparent + upper framing gives RGBA frames of
  the output size (alpha 0 around the avatar, high on the torso), camera mode too; an ONNX
  export without ``alpha`` is refused for non-learned backgrounds with a clear message.
"""

from __future__ import annotations

import numpy as np
import pytest

from live_fixture import TAIJI, live_subject  # noqa: F401  (session fixture)
from ram_avatar.errors import RamAvatarError
from ram_avatar.render.composite import (BackgroundError, over_colour, parse_background,
                                         parse_colour, replace_background_uint8)
from ram_avatar.render.framing import (AvatarComposer, FramingError, OutputSettings,
                                       box_in_view, camera_view, letterbox)

S = 128


def _scene(x: np.ndarray, y: np.ndarray):
    """A smooth person (disc, alpha) with a colour pattern, and a learned background pattern,
    as functions of training-crop coordinates (pixels)."""
    r = np.hypot(x - 64.0, y - 60.0)
    alpha = np.clip((30.0 - r) / 2.0, 0, 1)  # a disc of radius 30 with a 2 px soft edge
    fg = np.stack([0.5 + 0.4 * np.sin(x / 9.0), 0.5 + 0.4 * np.cos(y / 11.0),
                   0.5 + 0.3 * np.sin((x + y) / 13.0)], -1)
    bg = np.stack([0.3 + 0.2 * np.sin(x / 7.0), 0.4 + 0.2 * np.cos(y / 5.0),
                   0.5 + 0.0 * x], -1)
    return fg, alpha, bg


def _render(view=None):
    """What the renderer draws: the person seen by the camera of ``view`` (training crop when
    None), composited over the learned background at *fixed* pixels (as AvatarRenderer does)."""
    u = np.arange(S) + 0.5
    ux, uy = np.meshgrid(u, u)
    vx, vy, vs = (0.0, 0.0, S) if view is None else (view[0], view[1], view[2])
    fg, alpha, _ = _scene(vx + ux * vs / S, vy + uy * vs / S)  # the person moves with the camera
    _, _, bg_fixed = _scene(ux, uy)                          # the learned background does not
    rgb = alpha[..., None] * fg + (1 - alpha[..., None]) * bg_fixed
    to8 = lambda a: (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)  # noqa: E731
    return to8(rgb), to8(alpha), to8(bg_fixed)


@pytest.mark.parametrize("background", ["learned", "transparent", "#2040FF"])
def test_camera_zoom_shows_what_crop_shows(background):
    lm = np.full((33, 2), np.nan)  # head-and-shoulders box from a few landmarks
    lm[0], lm[11], lm[12], lm[23], lm[24] = (64, 40), (52, 56), (76, 56), (56, 90), (72, 90)
    out = {}
    for mode in ("crop", "camera"):
        comp = AvatarComposer(parse_background(background), None, "head", zoom=1.5,
                              out_size=(320, 180), zoom_mode=mode)
        box = comp.next_box(lm, None, S)
        view = comp.view(box, S)
        rgb, alpha, learned = _render(view)
        comp.learned = learned
        out[mode] = comp.compose(rgb, alpha, box, view).astype(np.float64)
        if mode == "camera":
            assert view[2] == pytest.approx(box[2])                  # side = box width (16:9)
            assert S / view[2] > 2.0                                  # a real zoom
    assert out["crop"].shape == out["camera"].shape == (180, 320, 4 if background == "transparent" else 3)
    diff = np.abs(out["crop"] - out["camera"])
    # same picture; crop is blurrier (bilinear upscale of ~2.6x), so only small differences
    assert diff[..., :3].mean() < 3.0, diff.mean()
    if background == "transparent":
        assert diff[..., 3].mean() < 3.0
    if background == "learned":
        return  # the learned background is itself upscaled in both modes
    # the camera view draws the person sharper: more high-frequency energy (Laplacian)
    import cv2

    lap = {m: cv2.Laplacian(cv2.cvtColor(out[m][..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY),
                            cv2.CV_64F).var() for m in out}
    assert lap["camera"] >= lap["crop"]


def test_camera_view_geometry_and_cap():
    box = (10.0, 20.0, 64.0, 36.0)
    v = camera_view(box, 256)
    assert v == pytest.approx((10.0, 20.0 + 18 - 32, 64.0, 64.0))
    b = box_in_view(box, v, 256)
    assert b == pytest.approx((0.0, (32 - 18) * 4.0, 256.0, 144.0))
    capped = camera_view(box, 256, max_zoom=1.25)              # at most 1.25x the crop
    assert capped[2] == pytest.approx(256 / 1.25)
    assert capped[0] + capped[2] / 2 == pytest.approx(42.0)    # centred on the box
    with pytest.raises(FramingError):
        camera_view((0, 0, 0, 10), 256)


def test_output_settings_validation():
    s = OutputSettings.parse("transparent", "upper", 1.5, "0.1,-0.05", "640x360", "camera")
    assert s.has_alpha and s.camera and s.out_size == (640, 360) and s.offset == (0.1, -0.05)
    assert s.output_size(256) == (640, 360)
    assert OutputSettings.parse().output_size(256) == (256, 256)
    assert OutputSettings.parse(framing="none") == OutputSettings()
    for kw, err in [({"framing": "legs"}, FramingError), ({"out_size": "641x360"}, FramingError),
                    ({"zoom": 0}, FramingError), ({"zoom_mode": "dolly"}, FramingError),
                    ({"offset": "a,b"}, FramingError), ({"background": "nope"}, BackgroundError)]:
        with pytest.raises(err):
            OutputSettings.parse(**kw)
    assert parse_colour("#00ff00") == (0, 255, 0)
    with pytest.raises(BackgroundError, match="RRGGBB"):
        parse_colour("green")


def test_sink_helpers():
    rgba = np.zeros((90, 160, 4), np.uint8)
    rgba[30:60, 60:100] = (200, 100, 50, 255)                 # opaque avatar, transparent around
    keyed = over_colour(rgba, (0, 255, 0))
    assert keyed.shape == (90, 160, 3)
    assert (keyed[0, 0] == (0, 255, 0)).all() and (keyed[45, 80] == (200, 100, 50)).all()
    box = letterbox(keyed, (200, 200), fill=(0, 255, 0))       # 16:9 into a square sink
    assert box.shape == (200, 200, 3)
    assert (box[10, 100] == (0, 255, 0)).all()                 # the border is key-coloured
    assert (box[100, 100] == (200, 100, 50)).all()
    la = letterbox(rgba, (320, 320))
    assert la[0, 0, 3] == 0 and la[160, 160, 3] == 255
    rgb = np.full((4, 4, 3), 100, np.uint8)
    a = np.array([[0, 255, 128, 0]] * 4, np.uint8)
    out = replace_background_uint8(rgb, a, np.full((4, 4, 3), 100, np.uint8),
                                   np.full((4, 4, 3), 200, np.uint8))
    assert out[0, 0, 0] == 200 and out[0, 1, 0] == 100 and abs(int(out[0, 2, 0]) - 150) <= 1


# ---------------------------------------------------------------------------------------------
# the real runtime on a tiny trained subject


def _frames(n: int, start: int = 100):
    from ram_avatar.capture.video import iter_frames

    return list(iter_frames(TAIJI, start, start + n))


def test_runtime_transparent_upper_framing(live_subject):  # noqa: F811
    from ram_avatar.runtime.avatar_runtime import AvatarRuntime

    out = OutputSettings.parse("transparent", "upper", out_size="320x180")
    with AvatarRuntime(live_subject, backend="onnx", device="cpu", output=out) as rt:
        assert rt.has_alpha and rt.engine.has_alpha
        frames = _frames(3)
        imgs = [rt.process(f) for f in frames]
        img, stats = imgs[-1]
        assert img.shape == (180, 320, 4) and img.dtype == np.uint8
        x0, y0, w, h = stats["box"]
        assert w / h == pytest.approx(16 / 9, rel=1e-6)
        # alpha ~0 at the frame's corners (an untrained renderer's alpha prior: sigmoid(-3) =
        # 12/255), high on the torso (shoulder/hip centre in output pixels)
        assert img[:6, :6, 3].max() <= 20 and img[-6:, -6:, 3].max() <= 20
        lm = rt.last.avatar_pose_2d
        torso = np.nanmean(lm[[11, 12, 23, 24]], 0)
        u = int((torso[0] - x0) * 320 / w)
        v = int((torso[1] - y0) * 180 / h)
        assert img[v - 2:v + 3, u - 2:u + 3, 3].min() >= 200, img[v - 2:v + 3, u - 2:u + 3, 3]
        # the same frames with a closer virtual camera: same output size, same placement
        rt.set_output(OutputSettings.parse("transparent", "upper", out_size="320x180",
                                           zoom_mode="camera"))
        rt.reset()
        img_c, stats_c = [rt.process(f) for f in frames][-1]
        assert img_c.shape == (180, 320, 4)
        view = rt.last.extra["camera_view"]
        assert view is not None and view[2] < rt.resolution          # closer than the crop
        assert img_c[v - 2:v + 3, u - 2:u + 3, 3].min() >= 200
        assert img_c[:6, :6, 3].max() <= 20
        # silhouettes agree (same box, same pose): IoU of alpha > 128
        a, b = img[..., 3] > 128, img_c[..., 3] > 128
        assert (a & b).sum() / max((a | b).sum(), 1) > 0.8
        # back to the plain square over the learned background
        rt.set_output(OutputSettings())
        sq, _ = rt.process(frames[0])
        assert sq.shape == (rt.resolution, rt.resolution, 3)


class _NoAlpha:
    """An ONNX renderer as exported before the ``alpha`` output existed."""

    def __init__(self, inner):
        self.inner, self.name, self.resolution = inner, "onnx", inner.resolution
        self.providers, self.input_names, self.has_alpha = inner.providers, inner.input_names, False

    def __call__(self, maps):
        return self.inner(maps)


def test_old_export_without_alpha_is_refused(live_subject):  # noqa: F811
    import torch

    from ram_avatar.runtime.avatar_runtime import AvatarRuntime, OnnxRenderer

    engine = OnnxRenderer(live_subject / "export" / "avatar.onnx", torch.device("cpu"))
    shapes = {i.name: i.shape for i in engine.runner.session.get_inputs()}
    maps = {n: torch.zeros([d if isinstance(d, int) else 1 for d in shapes[n]])
            for n in engine.input_names}
    rgb, alpha = engine.render(maps)
    assert rgb.shape == (1, 3, engine.resolution, engine.resolution)
    assert alpha.shape == (1, 1, engine.resolution, engine.resolution)
    assert float(alpha.max()) < 0.1                           # no body: background only
    np.testing.assert_allclose(rgb, engine(maps), atol=1e-6)
    rt = AvatarRuntime(live_subject, device="cpu", engine=_NoAlpha(engine))
    try:
        with pytest.raises(RamAvatarError, match="ram-avatar export"):
            rt.set_output(OutputSettings.parse("transparent", "upper"))
        rt.set_output(OutputSettings.parse("learned", "upper", out_size="320x180"))  # crop: fine
        img, _ = rt.process(_frames(1)[0])
        assert img.shape == (180, 320, 3)
    finally:
        rt.close()

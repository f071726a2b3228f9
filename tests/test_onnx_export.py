"""ONNX export + parity check + dynamic batch in ONNX Runtime; TensorRT guard without tensorrt."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exporters.onnx_export import OnnxRunner, export_onnx
from ram_avatar.errors import RamAvatarError
from ram_avatar.models import AvatarRenderer


class ModConv(nn.Module):
    """StyleGAN2 modulated conv as 'modulate input / demodulate output' (batch-agnostic)."""

    def __init__(self, c_in, c_out, style_dim, k=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5)
        self.affine = nn.Linear(style_dim, c_in)
        self.pad = k // 2

    def forward(self, x, style):
        s = self.affine(style) + 1.0  # (B, C_in)
        x = x * s[:, :, None, None]
        y = F.conv2d(x, self.weight, padding=self.pad)
        # demod: 1/sqrt(sum_{in,k} (w * s)^2) per (batch, out)
        d = torch.rsqrt((self.weight.pow(2).sum((2, 3))[None] * s[:, None, :].pow(2)).sum(2) + 1e-8)
        return y * d[:, :, None, None]


class TinyRenderer(nn.Module):
    """Conv encoder, grid_sample warp of a learned texture by the uv map, modulated conv decoder,
    dict output like AvatarRenderer."""

    def __init__(self):
        super().__init__()
        self.texture = nn.Parameter(torch.randn(1, 4, 16, 16))
        self.enc = nn.Conv2d(4 + 1, 8, 3, padding=1)
        self.style = nn.Parameter(torch.randn(1, 6))
        self.mod = ModConv(8, 8, 6)
        self.to_rgba = nn.Conv2d(8, 4, 1)

    def forward(self, uv, body_mask):
        b = uv.shape[0]
        grid = uv.permute(0, 2, 3, 1) * 2 - 1
        tex = F.grid_sample(self.texture.expand(b, -1, -1, -1), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)
        h = F.leaky_relu(self.enc(torch.cat([tex * body_mask, body_mask], 1)), 0.2)
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.mod(h, self.style.expand(b, -1)), 0.2)
        out = self.to_rgba(h)
        return {"rgb": torch.sigmoid(out[:, :3]), "alpha": torch.sigmoid(out[:, 3:])}


def _inputs(b, s=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"uv": torch.rand(b, 2, s, s, generator=g),
            "body_mask": (torch.rand(b, 1, s, s, generator=g) > 0.3).float()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyRenderer()
    path = tmp_path_factory.mktemp("onnx") / "avatar.onnx"
    report = export_onnx(model, _inputs(2), path, output_names=["rgb", "alpha"])
    return model, path, report


def test_export_report(exported):
    _, path, report = exported
    assert path.is_file()
    assert report["max_abs_diff"] < 1e-4
    assert report["opset"] == 17
    assert [i["name"] for i in report["inputs"]] == ["uv", "body_mask"]
    assert [o["name"] for o in report["outputs"]] == ["rgb", "alpha"]
    assert report["inputs"][0]["shape"] == ["batch", 2, 24, 24]
    assert report["outputs"][0]["shape"][0] == "batch"
    assert report["outputs"][1]["shape"][1] == 1
    assert report["inputs"][0]["dtype"] == "float32"
    assert len(report["sha256"]) == 64 and report["size_bytes"] == path.stat().st_size
    assert report["onnxruntime_version"]
    json.dumps(report)  # serialisable for export.json
    # no temporary files left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["avatar.onnx"]


def test_onnx_checker_passes(exported):
    import onnx

    onnx.checker.check_model(str(exported[1]))
    ops = {n.op_type for n in onnx.load(str(exported[1])).graph.node}
    assert "GridSample" in ops and "Conv" in ops


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_in_onnxruntime(exported, batch):
    model, path, _ = exported
    runner = OnnxRunner(path)
    assert runner.providers[-1] == "CPUExecutionProvider"
    assert runner.input_names == ["uv", "body_mask"]
    inp = _inputs(batch, seed=batch)
    out = runner(inp)  # torch tensors accepted
    with torch.no_grad():
        ref = model(**inp)
    for k in ("rgb", "alpha"):
        assert out[k].shape == tuple(ref[k].shape)
        assert np.abs(out[k] - ref[k].numpy()).max() < 1e-4


def test_runner_rejects_wrong_names(exported):
    runner = OnnxRunner(exported[1])
    with pytest.raises(RamAvatarError, match="missing"):
        runner({"uv": np.zeros((1, 2, 24, 24), np.float32)})


def test_positional_inputs_and_tuple_outputs(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            y = self.c(x)
            return y, y.mean((2, 3))

    rep = export_onnx(Net(), {"image": torch.rand(2, 3, 8, 8)}, tmp_path / "n.onnx",
                      output_names=["feat", "pooled"], dynamic_batch=False)
    assert rep["inputs"][0]["shape"] == [2, 3, 8, 8]
    assert rep["max_abs_diff"] < 1e-5


def test_failed_export_leaves_no_file(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(RamAvatarError):
        export_onnx(TinyRenderer(), _inputs(1), path, output_names=["rgb", "nope"],
                    exporter="legacy")
    assert list(tmp_path.iterdir()) == []
    # a failure after the file was written (parity above atol) removes the temporary file too
    with pytest.raises(RamAvatarError, match="parity"):
        export_onnx(TinyRenderer(), _inputs(1), path, output_names=["rgb", "alpha"], atol=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_runner_missing_file(tmp_path):
    with pytest.raises(RamAvatarError, match="does not exist"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_tensorrt_missing_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    from exporters.tensorrt import TensorRTRunner, build_engine

    with pytest.raises(RamAvatarError, match=r"TensorRT is not installed: pip install "
                                             r"'ram-avatar-studio\[tensorrt\]'"):
        build_engine(tmp_path / "a.onnx", tmp_path / "a.engine")
    with pytest.raises(RamAvatarError, match="TensorRT is not installed"):
        TensorRTRunner(tmp_path / "a.engine")


@pytest.mark.parametrize("variant", ["v1", "full"])
def test_renderer_export_frozen_texture_and_alpha(tmp_path, variant):
    """The export wrapper collapses the texture pyramid (+ the RGB texture) into one constant:
    the graph has no GridSample and no Resize of the pyramid, and outputs rgb then alpha equal to the
    trained model's. The mean style code is folded into the generator's convolutions: every
    modulated layer is one Conv (no Mul on its input or output maps), same outputs, any batch."""
    import onnx

    from exporters.avatar import FrozenTexture, RendererExport
    from ram_avatar.models.renderer import AvatarRenderer, RendererConfig

    torch.manual_seed(0)
    cfg = RendererConfig(variant=variant, resolution=32, texture_channels=4, texture_size=32,
                         texture_levels=3, base_channels=8, max_channels=16, style_dim=16,
                         latent_dim=8, texture_rgb=True)
    model = AvatarRenderer(cfg).eval()
    model.set_rgb_texture(torch.rand(3, 32, 32))
    gen = model.generator
    with torch.no_grad():  # a trained-looking style: latents and biases away from their init
        gen.latents.weight.normal_()
        for p_name, p in gen.named_parameters():
            if p_name.endswith("bias") and p.dim() == 4:
                p.normal_(0.0, 0.1)
    gen.mark_trained(torch.tensor([0]))
    styled = sum(type(m).__name__ in ("StyledConv", "ToRGB") for m in gen.modules())
    names = model.input_names()
    g = torch.Generator().manual_seed(1)
    maps = {}
    for n in names:
        c = {"uv": 2, "body_mask": 1, "hand": 5, "face": 3}[n.replace("prev_", "").replace("_expanded", "")]
        maps[n] = torch.rand(2, c, 32, 32, generator=g)
        if "body_mask" in n:
            maps[n] = (maps[n] > 0.3).float()
    wrapper = RendererExport(model).eval()
    assert isinstance(wrapper.renderer.texture, FrozenTexture) and wrapper.frozen
    assert wrapper.folded == styled > 0
    assert not any(type(m).__name__ in ("StyledConv", "ToRGB") for m in wrapper.renderer.modules())
    assert wrapper.renderer.texture.texture.shape == (1, 4 + 3, 32, 32)
    assert model.texture.levels == 3  # the trained model is untouched
    with torch.no_grad():
        ref = model.forward_batch(maps, None)
        got = wrapper(*[maps[n] for n in names])
    for k, v in zip(("rgb", "alpha"), got):
        assert (v - ref[k]).abs().max() < 1e-5
    path = tmp_path / "avatar.onnx"
    report = export_onnx(wrapper, maps, path, output_names=list(RendererExport.OUTPUTS),
                         dynamic_batch=True)
    assert [o["name"] for o in report["outputs"]] == ["rgb", "alpha"]
    assert report["outputs"][1]["shape"] == ["batch", 1, 32, 32]
    nodes = onnx.load(str(path)).graph.node
    ops = [node.op_type for node in nodes]
    outs = OnnxRunner(path)({n: maps[n] for n in names})
    for k in ("rgb", "alpha"):
        assert np.abs(outs[k] - ref[k].numpy()).max() < 1e-4
    # without freezing, the pyramid's 2 coarse levels are upsampled inside the graph (Resize);
    # frozen, only the generator's Resize ops remain and row gathers read the constant
    export_onnx(RendererExport(model, freeze=False), maps, tmp_path / "a0.onnx",
                output_names=["rgb", "alpha"])
    nodes0 = onnx.load(str(tmp_path / "a0.onnx")).graph.node
    ops0 = [node.op_type for node in nodes0]
    # (the RGB texture has its own GridSample: the full variant samples it at the current map
    # only, and both variants read it through NeuralTexture.sample)
    assert ops0.count("GridSample") == 2
    assert ops.count("GridSample") == 0
    assert ops.count("Gather") >= 4
    assert ops.count("Resize") == ops0.count("Resize") - 2
    # folded: each modulated layer loses its input and demodulation Mul (ToRGB: input only)
    # and its bias Add; the styled convs' gain Mul goes too
    def generator_ops(graph, op):
        return sum(n.op_type == op and "/generator/" in n.name for n in graph)

    assert generator_ops(nodes0, "Mul") > 0
    assert generator_ops(nodes, "Mul") <= generator_ops(nodes0, "Mul") - styled
    assert generator_ops(nodes, "Conv") == generator_ops(nodes0, "Conv") > 0
    one = {n: maps[n][:1] for n in names}
    with torch.no_grad():
        ref1 = model.forward_batch(one, None)
    outs1 = OnnxRunner(path)(one)
    assert all(np.abs(outs1[k] - ref1[k].numpy()).max() < 1e-4 for k in ("rgb", "alpha"))


def test_full_onnx_export_dynamic_batch(tmp_path, full_config, full_maps, open_attention):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from exporters.onnx_export import export_onnx

    torch.manual_seed(0)
    model = AvatarRenderer(full_config()).eval()
    open_attention(model)
    names = model.input_names()

    from ram_avatar.models.export import RendererExport

    wrapper = RendererExport(model, freeze=False).eval()  # the trained texture module as is
    maps = full_maps(2, 64, seed=1)
    report = export_onnx(wrapper, {k: maps[k] for k in names}, tmp_path / "full.onnx",
                         output_names=["rgb", "alpha"], dynamic_batch=True, atol=1e-4)
    assert report["inputs"][0]["shape"][0] == "batch"
    sess = ort.InferenceSession(str(tmp_path / "full.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        m = full_maps(batch, 64, seed=batch + 5)
        with torch.no_grad():
            ref = wrapper(*[m[k] for k in names])
        got = sess.run(None, {k: m[k].numpy() for k in names})
        for r, o in zip(ref, got):
            assert float((r - torch.from_numpy(o)).abs().max()) < 1e-4


def test_frozen_texture_samples_the_constant_without_expand(tmp_path):
    """FrozenTexture reads the constant with four row gathers (issue 13's per-op profile:
    ONNX Runtime's GridSample took half the render and an Expand copy of the constant
    105-142 ms per frame with paper-1024): the values of the trained NeuralTexture's
    grid_sample (bilinear, border, align_corners=False; uv on the texture's edges included)
    for B > 1, and the exported graph has neither GridSample nor Expand."""
    import onnx
    import onnxruntime as ort

    from ram_avatar.models.export import FrozenTexture
    from ram_avatar.models.neural_texture import NeuralTexture

    torch.manual_seed(0)
    tex = NeuralTexture(channels=6, size=32, levels=3, rgb=True)
    frozen = FrozenTexture(tex).eval()
    uv, mask = torch.rand(3, 2, 24, 20), (torch.rand(3, 1, 24, 20) > 0.3).float()
    uv[0, :, :4, :4] = 0.0  # the texture's borders: grid_sample's clamp
    uv[1, :, -4:, -4:] = 1.0
    uv[2, 0, :2] = torch.tensor([-0.2, 1.3]).view(2, 1)  # outside [0, 1]: border padding
    with torch.no_grad():
        ref, got = tex(uv, mask), frozen(uv, mask)
    assert got.shape == (3, 9, 24, 20)
    assert float((ref - got).abs().max()) < 1e-6
    assert frozen.texture.shape == (1, 9, 32, 32)
    path = tmp_path / "tex.onnx"
    torch.onnx.export(frozen, (uv, mask), str(path), dynamo=False, opset_version=17,
                      input_names=["uv", "body_mask"], output_names=["features"],
                      dynamic_axes={"uv": {0: "batch"}, "body_mask": {0: "batch"}})
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert "GridSample" not in ops and ops.count("Gather") >= 4
    # the constant is never expanded (the one Expand broadcasts the pixel indices over the
    # channels for the scatter)
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output}
    assert not any(n.op_type == "Expand" and n.input[0] in constants for n in graph.node)
    # only the on-body pixels are sampled: their indices (NonZero), one scatter back
    assert ops.count("NonZero") == 1 and ops.count("ScatterElements") == 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):  # dynamic batch
        out = sess.run(None, {"uv": uv[:b].numpy(), "body_mask": mask[:b].numpy()})[0]
        assert np.abs(out - ref[:b].numpy()).max() < 1e-5
    # any number of on-body pixels, none and all included; zero off the body
    for m in (torch.zeros_like(mask), torch.ones_like(mask), (torch.rand_like(mask) > 0.9).float()):
        with torch.no_grad():
            want = tex(uv, m)
        out = sess.run(None, {"uv": uv.numpy(), "body_mask": m.numpy()})[0]
        assert out.shape == (3, 9, 24, 20) and np.abs(out - want.numpy()).max() < 1e-5
        assert np.abs(out * (1.0 - m.numpy())).max() == 0.0


def test_frozen_texture_sample_gives_rgb_at_the_leading_maps_only(tmp_path):
    """The full renderer's stacked sampling (issue 13): ``sample(uv, mask, rgb_batch)`` returns
    the learned features at every stacked map and the RGB colour at the first ``rgb_batch``
    maps only, equal to the trained NeuralTexture's, in torch and in ONNX Runtime with a
    dynamic batch."""
    import onnxruntime as ort

    from ram_avatar.models.export import FrozenTexture
    from ram_avatar.models.neural_texture import NeuralTexture

    torch.manual_seed(0)
    tex = NeuralTexture(channels=5, size=16, levels=2, rgb=True)
    tex.set_rgb_texture(torch.rand(3, 16, 16))
    frozen = FrozenTexture(tex).eval()
    uv, mask = torch.rand(6, 2, 12, 10), (torch.rand(6, 1, 12, 10) > 0.4).float()
    with torch.no_grad():
        full = tex(uv, mask)                                # (6, 5 + 3, 12, 10)
        feats, rgb = tex.sample(uv, mask, 2)
        f2, rgb2 = frozen.sample(uv, mask, 2)
        f0, none = frozen.sample(uv, mask, 0)
    assert feats.shape == (6, 5, 12, 10) and rgb.shape == (2, 3, 12, 10) and none is None
    assert float((feats - full[:, :5]).abs().max()) < 1e-6
    assert float((rgb - full[:2, 5:]).abs().max()) < 1e-6
    assert float((f2 - feats).abs().max()) < 1e-6 and float((rgb2 - rgb).abs().max()) < 1e-6
    assert float((f0 - feats).abs().max()) < 1e-6

    class Stacked(torch.nn.Module):  # three maps of batch B stacked, colour for the first B
        def __init__(self):
            super().__init__()
            self.tex = frozen

        def forward(self, uv, mask):
            return self.tex.sample(torch.cat([uv, uv.flip(0), 1.0 - uv]),
                                   torch.cat([mask, mask, mask]), mask.shape[0])

    path = tmp_path / "stacked.onnx"
    torch.onnx.export(Stacked(), (uv[:2], mask[:2]), str(path), dynamo=False, opset_version=17,
                      input_names=["uv", "body_mask"], output_names=["features", "rgb"],
                      dynamic_axes={"uv": {0: "batch"}, "body_mask": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        got_f, got_rgb = sess.run(None, {"uv": uv[:b].numpy(), "body_mask": mask[:b].numpy()})
        with torch.no_grad():
            want_f, want_rgb = Stacked()(uv[:b], mask[:b])
        assert got_f.shape == (3 * b, 5, 12, 10) and got_rgb.shape == (b, 3, 12, 10)
        assert np.abs(got_f - want_f.numpy()).max() < 1e-5
        assert np.abs(got_rgb - want_rgb.numpy()).max() < 1e-5

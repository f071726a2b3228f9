"""Export view of the renderer and the one ONNX export path (issue 11, item 5).

Everything that writes an ONNX file goes through :func:`export_onnx`: ``ram-avatar export``
(:mod:`exporters.avatar`, the subject's trained renderer), ``ram-avatar bench live`` (a
timing-only random renderer, :func:`ram_avatar.bench.export_random_onnx`) and the benches of
renderer parts. The export-only differences of the renderer live in one wrapper,
:class:`RendererExport` (mean style code folded into the generator's convolutions by
:func:`fold_style`, texture pyramid frozen into one constant by :class:`FrozenTexture`, outputs
``rgb`` then ``alpha``), never in a copy of the model. Both live
here, next to the model, because ``ram_avatar`` may not import ``exporters``;
``exporters.onnx_export`` and ``exporters.avatar`` re-export them.

:func:`export_onnx` exports a module with ``torch.onnx.export``, validates the file with
``onnx.checker``, runs it in ONNX Runtime (CPU) on the same inputs and returns a report (names,
shapes with a symbolic ``batch`` axis, dtypes, opset, max |onnx - torch|, versions, sha256).
The file is written atomically: a failed export or check leaves no file behind.

Exporter choice (checked with torch 2.13): the TorchScript-based exporter (``dynamo=False``)
works with only the core dependencies and handles ``grid_sample`` (ONNX GridSample, opset >= 16)
and convolutions; the torch.export-based exporter (``dynamo=True``, torch's default since 2.9)
additionally needs the ``onnxscript`` package. ``exporter="auto"`` tries the TorchScript one
first and falls back to dynamo when it fails and onnxscript is installed.

Note for dynamic batch: a StyleGAN2 "fused" modulated conv written as a grouped conv with
``groups=batch`` bakes the batch size into the graph; the equivalent "modulate input, shared
conv, demodulate output" form exports with a dynamic batch.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ram_avatar.errors import RamAvatarError
from ram_avatar.models.neural_texture import NeuralTexture
from ram_avatar.models.styleunet import _LRELU_GAIN, StyledConv, StyleUNet, ToRGB, _up2
from ram_avatar.utils import atomic_path, sha256_file

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "RendererExport", "FrozenTexture", "freeze_texture", "fold_style",
           "FoldedStyleConv", "FROZEN_TEXTURE_ATOL"]


class FrozenTexture(nn.Module):
    """Export view of a :class:`ram_avatar.models.neural_texture.NeuralTexture`: the pyramid
    collapsed and the fixed RGB texture concatenated once, into the constant table ``texels``
    ``(S*S, C(+3))`` (texel rows, channels last); :meth:`forward` is the texture's own
    sampling (bilinear, border padding, ``align_corners=False``, zero off the body: the maths
    of ``grid_sample``) written as four row gathers of that table.

    Why gathers (issue 13, ONNX Runtime per-op profiles at 256^2, 1 thread, random weights,
    the two graphs timed interleaved): ONNX Runtime's CPU ``GridSample`` kernel took 53-58 %
    of the exported render. With the gathers the whole render went from 195 to 158 ms
    (``cpu-256``) and from 1076 to 594 ms (``paper-1024``), outputs within 1.2e-7; the
    former per-frame ``Expand`` copy of the constant is gone too. TensorRT supports both ops.
    The body mask is folded into the four bilinear weights (per pixel) rather than applied to
    the sampled map: 4 full-size multiplies instead of 7 (cpu-256 at 256^2, 1 thread, whole
    render interleaved 40 runs: median 154.7 -> 145.9 ms, outputs within 1.2e-7); the weights
    are computed on flat ``(N,)`` vectors, not ``(N, 1)`` columns (30 runs: 109.4 -> 104.3 ms).
    Only the pixels on the body are sampled (``NonZero`` of the mask, then the gathers on those
    K rows and one scatter into a zero map): off the body every weight is zero, so the
    result is the same, and the work follows the person's area rather than the frame's (three
    256^2 maps, 1 thread: 55 -> 24 ms at 24 % coverage, 63 -> 49 ms at 60 %).

    Shapes: ``uv (B,2,H,W)`` in [0,1], ``body_mask (B,1,H,W)`` -> ``(B,C(+3),H,W)``.
    """

    def __init__(self, texture: nn.Module):
        super().__init__()
        with torch.no_grad():
            tex = texture.full_texture()
            if getattr(texture, "rgb", False):
                tex = torch.cat([tex, texture.rgb_texture], dim=1)
        s = int(tex.shape[-1])
        self.register_buffer("texels", tex[0].permute(1, 2, 0).reshape(s * s, -1)
                             .detach().clone().contiguous())
        self.channels, self.size, self.rgb = texture.channels, texture.size, texture.rgb

    @property
    def texture(self) -> torch.Tensor:
        """The frozen texture as an image ``(1, C(+3), S, S)`` (a view of ``texels``)."""
        s = self.size
        return self.texels.reshape(s, s, -1).permute(2, 0, 1)[None]

    @property
    def out_channels(self) -> int:
        return int(self.texels.shape[1])

    def _on_body_rows(self, uv: torch.Tensor, body_mask: torch.Tensor,
                      table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``table (S*S, c)`` sampled at the K pixels on the body: their flat indices ``(K,)``
        into ``B*H*W`` and the bilinear samples ``(K, c)``, the mask folded in."""
        n = self.size
        m = body_mask.reshape(-1)
        # only the pixels on the body are sampled (a zero mask zeroes all four weights)
        on = torch.nonzero(m).reshape(-1)                                     # (K,)
        m = m[on]
        # grid_sample's unnormalisation (align_corners=False) of the grid x = 2u - 1,
        # y = 1 - 2v (uv_to_grid) is x_texel = u n - 1/2, y_texel = (1 - v) n - 1/2; u and v
        # are gathered from their own channels (no grid image, no channels-last transpose)
        u = uv[:, 0].reshape(-1)[on]                                          # (K,)
        v = uv[:, 1].reshape(-1)[on]
        x = (u * n - 0.5).clamp(0, n - 1)                                     # border clamp
        y = ((1.0 - v) * n - 0.5).clamp(0, n - 1)
        x0, y0 = x.floor(), y.floor()
        wx, wy = x - x0, y - y0
        xi, yi = x0.long(), y0.long()
        xj, yj = (xi + 1).clamp(max=n - 1), (yi + 1).clamp(max=n - 1)
        # the four bilinear weights, with the body mask folded in, computed on flat vectors
        # (ONNX Runtime broadcasts slowly over (K, 1) columns) and applied as (K, 1) columns:
        # four multiplies of the (K, C) gathered rows instead of six plus the mask's
        ax, ay = 1.0 - wx, 1.0 - wy
        t = table
        rows = (t[yi * n + xi] * (ax * ay * m)[:, None] + t[yi * n + xj] * (wx * ay * m)[:, None]
                + t[yj * n + xi] * (ax * wy * m)[:, None]
                + t[yj * n + xj] * (wx * wy * m)[:, None])                   # (K, C)
        return on, rows

    @staticmethod
    def _scatter(on: torch.Tensor, rows: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """The K rows ``(K, c)`` written at their pixels ``on`` of a zero ``(B, c, H, W)`` map.

        Channel-first: the ``(K, c)`` rows are transposed (K of the B*H*W pixels) and scattered
        along the pixel axis, instead of scattering rows into a ``(B*H*W, c)`` map and
        transposing all of it (three stacked 256^2 maps, 19 channels, 1 thread: 18.8 -> 16.2 ms
        median, identical outputs; ``/work/exp/s20/tex_variants.py``)."""
        c = rows.shape[1]
        out = rows.new_zeros(c, b * h * w).scatter(1, on[None].expand(c, -1), rows.t())
        return out.reshape(c, b, h, w).permute(1, 0, 2, 3)

    def forward(self, uv: torch.Tensor, body_mask: torch.Tensor) -> torch.Tensor:
        b, _, h, w = uv.shape
        on, rows = self._on_body_rows(uv, body_mask, self.texels)
        return self._scatter(on, rows, b, h, w)

    def sample(self, uv: torch.Tensor, body_mask: torch.Tensor,
               rgb_batch: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`ram_avatar.models.neural_texture.NeuralTexture.sample` from the frozen table:
        the learned features at every map ``(N,C,H,W)``, the RGB colour at the first
        ``rgb_batch`` maps ``(rgb_batch,3,H,W)`` (None without it)."""
        b, _, h, w = uv.shape
        c = self.channels
        on, rows = self._on_body_rows(uv, body_mask, self.texels[:, :c])
        feats = self._scatter(on, rows, b, h, w)
        if not (self.rgb and rgb_batch):
            return feats, None
        on0, rgb = self._on_body_rows(uv[:rgb_batch], body_mask[:rgb_batch], self.texels[:, c:])
        return feats, self._scatter(on0, rgb, rgb_batch, h, w)


class FoldedStyleConv(nn.Module):
    """Export view of a :class:`~ram_avatar.models.styleunet.StyledConv` or
    :class:`~ram_avatar.models.styleunet.ToRGB` for one fixed style: one plain convolution with
    the modulation and demodulation folded into its weight
    (:meth:`~ram_avatar.models.styleunet.ModulatedConv2d.folded_weight`) and the layer's bias
    as the convolution's bias; a styled conv's gain-scaled leaky ReLU becomes a plain one, its
    gain folded into weight and bias (``lrelu(g z) = g lrelu(z)`` for ``g > 0``).

    In ONNX Runtime this is one ``Conv`` (fused with the ``LeakyRelu``) where the modulated
    layer was a ``Mul`` on the input map, the ``Conv``, a ``Mul`` by the demodulation, the bias
    ``Add``, the ``LeakyRelu`` and a ``Mul`` by the gain.

    Shapes: ``x (B,Cin,H,W)`` -> ``(B,Cout,H',W')`` (``H' = 2H`` for an upsampling layer);
    ``style`` is accepted and ignored, so the module slots into the generator's forward.
    """

    def __init__(self, layer: nn.Module, style: torch.Tensor):
        super().__init__()
        mod = layer.conv
        self.activate = isinstance(layer, StyledConv)
        gain = _LRELU_GAIN if self.activate else 1.0
        self.upsample, self.padding = mod.upsample, mod.padding
        self.register_buffer("weight", (mod.folded_weight(style) * gain).detach().clone())
        self.register_buffer("bias", (layer.bias.detach().reshape(-1) * gain).clone())

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if self.upsample:
            x = _up2(x)
        out = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return F.leaky_relu(out, 0.2) if self.activate else out


@torch.no_grad()
def fold_style(renderer: nn.Module) -> int:
    """Fold the generator's mean style code into its convolutions, in place: every
    ``StyledConv`` / ``ToRGB`` of ``renderer.generator`` becomes a :class:`FoldedStyleConv`
    for the style of the mean per-frame latent (what the exported renderer always uses).

    Returns:
        the number of layers folded (0 when the renderer has no StyleUNet generator).
    """
    gen = getattr(renderer, "generator", None)
    if not isinstance(gen, StyleUNet):
        return 0
    style = gen.style(None, 1)
    layers = [(name, m) for name, m in gen.named_modules() if isinstance(m, (StyledConv, ToRGB))]
    for name, layer in layers:
        parent_name, _, attr = name.rpartition(".")
        parent = gen.get_submodule(parent_name) if parent_name else gen
        setattr(parent, attr, FoldedStyleConv(layer, style))
    return len(layers)


def freeze_texture(renderer: nn.Module) -> nn.Module:
    """A copy of ``renderer`` whose neural texture is a :class:`FrozenTexture` (the renderer
    itself is unchanged); renderers without a UV texture (triplane) are copied as they are."""
    frozen = copy.deepcopy(renderer)
    if isinstance(getattr(frozen, "texture", None), NeuralTexture):
        frozen.texture = FrozenTexture(frozen.texture)
    return frozen


class RendererExport(nn.Module):
    """Export wrapper: maps in (positional, in ``renderer.input_names()`` order), composited
    ``rgb (B,3,S,S)`` and ``alpha (B,1,S,S)`` out, with the mean per-frame style code. By
    default the texture is frozen (:func:`freeze_texture`) and the mean style folded into the
    generator's convolutions (:func:`fold_style`), both on a copy; ``freeze=False`` keeps the
    trained modules as they are.

    Attributes:
        frozen: the texture is a :class:`FrozenTexture`.
        folded: number of generator layers folded (0 with ``freeze=False``).
    """

    OUTPUTS = ("rgb", "alpha")

    def __init__(self, renderer: nn.Module, freeze: bool = True):
        super().__init__()
        self.renderer = freeze_texture(renderer) if freeze else renderer
        self.frozen = freeze and isinstance(getattr(self.renderer, "texture", None), FrozenTexture)
        self.folded = fold_style(self.renderer) if freeze else 0
        self.names = tuple(renderer.input_names())

    def forward(self, *maps):
        out = self.renderer.forward_batch(dict(zip(self.names, maps)), None)
        return out["rgb"], out["alpha"]


#: largest |frozen - trained| (torch, float32) accepted before exporting
FROZEN_TEXTURE_ATOL = 1e-5


class _NamedIO(nn.Module):
    """Maps positional ONNX inputs to the wrapped module's arguments and flattens its outputs."""

    def __init__(self, module: nn.Module, input_names: Sequence[str],
                 output_names: Sequence[str], as_kwargs: bool):
        super().__init__()
        self.module = module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.as_kwargs = as_kwargs

    def forward(self, *args: torch.Tensor):
        if self.as_kwargs:
            out = self.module(**dict(zip(self.input_names, args)))
        else:
            out = self.module(*args)
        if isinstance(out, Mapping):
            missing = [n for n in self.output_names if n not in out]
            if missing:
                raise RamAvatarError(f"export: the model's output dict has no {missing} "
                                     f"(it has {list(out)}); fix output_names")
            return tuple(out[n] for n in self.output_names)
        if isinstance(out, torch.Tensor):
            out = (out,)
        out = tuple(out)
        if len(out) != len(self.output_names):
            raise RamAvatarError(f"export: the model returns {len(out)} tensors but "
                                 f"{len(self.output_names)} output_names were given")
        return out


def _kwargs_mode(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> bool:
    """True when the dict keys are the forward()'s parameter names (then pass them by name)."""
    try:
        inspect.signature(module.forward).bind(**inputs)
        return True
    except (TypeError, ValueError):
        return False


def _value_info(vi) -> dict[str, Any]:
    import onnx

    t = vi.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
    return {"name": vi.name, "shape": dims, "dtype": dtype}


def _run_exporter(kind: str, wrapper: nn.Module, args: tuple, tmp: Path, input_names, output_names,
                  opset: int, dynamic_axes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated, still works
        if kind == "legacy":
            torch.onnx.export(wrapper, args, str(tmp), dynamo=False, opset_version=opset,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes=dynamic_axes, do_constant_folding=True)
        else:
            try:
                import onnxscript  # noqa: F401
            except ImportError as e:
                raise RamAvatarError("the dynamo ONNX exporter needs onnxscript: "
                                     "pip install onnxscript (or use exporter='legacy')") from e
            dynamic_shapes = None
            if dynamic_axes:
                batch = torch.export.Dim("batch")
                # the wrapper's forward(*args): one spec tuple for the var-positional parameter
                dynamic_shapes = (tuple({0: batch} for _ in input_names),)
            # the torch.export-based exporter emits opset >= 18 (down-conversion is unreliable)
            prog = torch.onnx.export(wrapper, args, dynamo=True, opset_version=max(opset, 18),
                                     input_names=list(input_names),
                                     output_names=list(output_names),
                                     dynamic_shapes=dynamic_shapes, external_data=False)
            prog.save(str(tmp))


@torch.no_grad()
def export_onnx(module: nn.Module, inputs: Mapping[str, torch.Tensor], path: str | os.PathLike,
                output_names: Sequence[str], dynamic_batch: bool = True, opset: int = 17,
                exporter: str = "auto", atol: float | None = None) -> dict[str, Any]:
    """Export ``module`` to ONNX, check it, and compare ONNX Runtime with PyTorch.

    Args:
        module: the model (set to eval mode here). Called as ``module(**inputs)`` when the keys
            are its forward() parameter names, else ``module(*inputs.values())``. It may return
            a tensor, a tuple/list, or a dict (outputs taken by ``output_names``).
        inputs: ONNX input name -> example tensor (B first). Exported on these tensors' device;
            float32 CPU tensors give the most portable graph.
        path: destination .onnx (written atomically; models must stay below 2 GB).
        output_names: ONNX output names, in output order (or dict keys to take).
        dynamic_batch: make axis 0 of every input and output the symbolic dimension ``batch``.
        opset: ONNX opset (>= 16 for grid_sample). The dynamo exporter uses max(opset, 18).
        exporter: "auto" (TorchScript exporter, then dynamo as fallback), "legacy" or "dynamo".
        atol: when given, raise if max |onnx - torch| exceeds it (no file is written then).

    Returns:
        report dict: path, exporter, opset, inputs/outputs (name, shape with "batch", dtype),
        max_abs_diff and max_abs_diff_per_output (vs torch, ONNX Runtime CPU), torch/onnx/
        onnxruntime versions, sha256, size_bytes, export_seconds. JSON-serialisable.

    Raises:
        RamAvatarError: export, checker or ONNX Runtime failed, parity above ``atol``, bad names.
    """
    import onnx
    import onnxruntime as ort

    if not inputs:
        raise RamAvatarError("export_onnx: no example inputs given")
    if exporter not in ("auto", "legacy", "dynamo"):
        raise RamAvatarError(f"exporter must be auto, legacy or dynamo, got {exporter!r}")
    path = Path(path)
    input_names = list(inputs)
    output_names = list(output_names)
    if len(set(input_names + output_names)) != len(input_names) + len(output_names):
        raise RamAvatarError(f"input and output names must be distinct: {input_names} "
                             f"{output_names}")
    was_training = module.training
    module.eval()
    try:
        wrapper = _NamedIO(module, input_names, output_names, _kwargs_mode(module, inputs)).eval()
        args = tuple(inputs[n] for n in input_names)
        ref = [t.detach().float().cpu().numpy() for t in wrapper(*args)]
        dynamic_axes = ({n: {0: "batch"} for n in input_names + output_names}
                        if dynamic_batch else None)
        kinds = {"auto": ["legacy", "dynamo"], "legacy": ["legacy"], "dynamo": ["dynamo"]}[exporter]
        t0 = time.perf_counter()
        with atomic_path(path) as tmp:
            used, errors = None, []
            for kind in kinds:
                try:
                    _run_exporter(kind, wrapper, args, tmp, input_names, output_names, opset,
                                  dynamic_axes)
                    used = kind
                    break
                except Exception as e:  # noqa: BLE001 - try the next exporter, report all
                    log.warning("ONNX export with the %s exporter failed: %s", kind, e)
                    errors.append(f"{kind}: {type(e).__name__}: {e}")
            if used is None:
                raise RamAvatarError("ONNX export failed: " + " | ".join(errors))
            export_s = time.perf_counter() - t0
            try:
                onnx.checker.check_model(str(tmp))
            except Exception as e:  # noqa: BLE001
                raise RamAvatarError(f"exported ONNX model fails onnx.checker: {e}") from e
            model = onnx.load(str(tmp), load_external_data=False)
            opset_used = next((o.version for o in model.opset_import
                               if o.domain in ("", "ai.onnx")), opset)
            report_inputs = [_value_info(v) for v in model.graph.input]
            report_outputs = [_value_info(v) for v in model.graph.output]
            del model
            try:
                sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                feed = {n: inputs[n].detach().cpu().numpy() for n in input_names
                        if n in {i.name for i in sess.get_inputs()}}
                got = sess.run(output_names, feed)
            except Exception as e:  # noqa: BLE001
                raise RamAvatarError(f"ONNX Runtime could not run the exported model: {e}") from e
            per_output = {n: float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
                          for n, g, r in zip(output_names, got, ref)}
            for n, g, r in zip(output_names, got, ref):
                if g.shape != r.shape:
                    raise RamAvatarError(f"ONNX output {n} has shape {g.shape}, torch gives "
                                         f"{r.shape}")
            max_diff = max(per_output.values())
            if not np.isfinite(max_diff):
                raise RamAvatarError(f"ONNX Runtime output is not finite (max diff {max_diff})")
            if atol is not None and max_diff > atol:
                raise RamAvatarError(f"ONNX parity check failed: max |onnx - torch| = "
                                     f"{max_diff:.3g} > atol {atol:g}; per output {per_output}")
        report = {
            "path": str(path),
            "exporter": {"legacy": "torchscript (dynamo=False)", "dynamo": "dynamo"}[used],
            "opset": int(opset_used),
            "dynamic_batch": bool(dynamic_batch),
            "inputs": report_inputs,
            "outputs": report_outputs,
            "max_abs_diff": max_diff,
            "max_abs_diff_per_output": per_output,
            "parity_provider": "CPUExecutionProvider",
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "onnxruntime_version": ort.__version__,
            "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size,
            "export_seconds": round(export_s, 3),
        }
        log.info("exported %s (%s exporter, opset %d): max |onnx - torch| = %.3g", path,
                 report["exporter"], report["opset"], max_diff)
        return report
    finally:
        module.train(was_training)

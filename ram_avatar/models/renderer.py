"""The avatar renderer: body features + StyleUNet + compositing over a learned background.

Two variants, chosen by ``RendererConfig.variant`` (checkpoints of either load as before):

``v1``
    RAM-Avatar (Sec. 3.1, 4.1) without dual attention and branches: the body neural texture is
    sampled at the rasterised UV map, concatenated with the raw hand (5 ch), face (3 ch) and
    body-mask (1 ch) maps, and translated by the StyleUNet into a foreground RGB and an alpha
    logit; the person is composited over a learned background image.

``full``
    The paper's renderer. Body features ``F`` (48 ch in the paper) from the UV neural texture or
    from a triplane sampled at the canonical-position map (``body_features``); dual attention
    (Sec. 3.2, :mod:`ram_avatar.models.dual_attention`) with queries from the expanded mesh's
    features ``F_e`` (spatial part) and from the previous frame's body features (temporal
    part); the face map and the finger map each through a shallow UNet to 16 channels
    (:mod:`ram_avatar.models.branches`); ``concat(F_body, F_hand, F_face, body_mask)`` into the
    StyleUNet. Every part can be switched off for ablations (``spatial_attention``,
    ``temporal_attention``, ``face_branch``, ``hand_branch``); a disabled part is not built
    (its parameters do not exist) and its input is ignored.

Extra inputs of the full variant (keyword arguments, all ``(B,C,S,S)`` like the base maps):
``uv_expanded``/``body_mask_expanded`` (expanded mesh), ``prev_uv``/``prev_body_mask`` (previous
frame), ``canon``/``canon_expanded``/``prev_canon`` (canonical positions, triplane only). When an
extra map is missing, the current frame's map stands in for it (the spatial part then attends
with queries from ``F`` itself, the temporal part treats the frame as static) and a warning is
logged once; :meth:`AvatarRenderer.input_names` lists what a config needs.

RGB texture (``RendererConfig.texture_rgb``, issue 10, either variant with the UV texture):
the neural texture also holds an RGB texture (:meth:`AvatarRenderer.set_rgb_texture`), typically
the texture baked from the training video by :mod:`ram_avatar.render.texture_bake`, fixed unless
training gives it a learning rate (:meth:`AvatarRenderer.rgb_texture_parameter`); it is
sampled at the same uv (at the current frame's map only); its 3 channels (zero off the body)
go straight to the generator input after the body features. The dual attention still sees
the learned features only.

Sections: :attr:`RendererConfig.body` (:class:`TextureSection` | :class:`TriplaneSection`),
:attr:`RendererConfig.attention` (:class:`AttentionSection` | None) and
:attr:`RendererConfig.branches` (:class:`BranchesSection` | None) are typed views of the flat
fields; :class:`AvatarRenderer` builds exactly the parts they name. The flat fields stay the
stored layout (``RendererConfig(resolution=..., texture_channels=...)``, config.yaml's ``model``
section, checkpoints, export.json), read back by :meth:`RendererConfig.from_dict`.
"""

from __future__ import annotations

import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from ram_avatar.models.inputs import BASE_INPUTS, EXTRA_INPUTS, data_extras, renderer_inputs  # noqa: F401
from ram_avatar.models.neural_texture import NeuralTexture
from ram_avatar.models.styleunet import StyleUNet

log = logging.getLogger(__name__)

VARIANTS = ("v1", "full")
BODY_FEATURES = ("texture", "triplane")
#: base inputs of every variant (ONNX input order) and optional inputs of the full variant:
#: the renderer-input contract, ram_avatar.models.inputs


@dataclass(frozen=True)
class TextureSection:
    """Body features from the UV neural texture (:class:`NeuralTexture`): ``channels`` C,
    ``size`` texels, ``levels`` of the Laplacian pyramid, ``init_std`` of its normal
    initialisation, the fixed RGB texture (``rgb``) and the generator's residual on it
    (``rgb_skip``). View of the flat ``texture_*`` fields of :class:`RendererConfig`."""

    channels: int
    size: int
    levels: int
    init_std: float
    rgb: bool
    rgb_skip: bool


@dataclass(frozen=True)
class TriplaneSection:
    """Body features from a triplane sampled at the canonical-position map (full variant,
    ``body_features="triplane"``): ``channels`` per plane (F has 3x this), plane ``size``,
    ``init_std``. View of the ``triplane_*`` fields."""

    channels: int
    size: int
    init_std: float


@dataclass(frozen=True)
class AttentionSection:
    """Dual attention (RAM-Avatar Sec. 3.2,
    :class:`~ram_avatar.models.dual_attention.DualAttention`): which parts are on and their sizes. View of the ``spatial_attention``,
    ``temporal_attention`` and ``attention_*`` fields."""

    spatial: bool
    temporal: bool
    channels: int
    qk_channels: int
    downsample: int
    recurrence: int
    distance_power: float
    residual: bool
    impl: str


@dataclass(frozen=True)
class BranchesSection:
    """Face and hand branches (shallow UNets, :mod:`ram_avatar.models.branches`): which are on,
    their input channels (``hand_in``, ``face_in``), ``channels`` out, ``hidden`` width and
    ``depth``. View of the ``face_branch``, ``hand_branch`` and ``branch_*`` fields."""

    face: bool
    hand: bool
    hand_in: int
    face_in: int
    channels: int
    hidden: int
    depth: int


@dataclass
class RendererConfig:
    """Architecture of :class:`AvatarRenderer` (sizes are config-driven; see training presets).

    Attributes:
        resolution: output side S in pixels (power of two); conditioning maps are S x S.
        texture_channels: neural texture channels C (paper: 48).
        texture_size: neural texture side in texels (paper: 1024).
        texture_levels: Laplacian-pyramid levels of the texture (1 = single texture).
        texture_init_std: std of the texture's normal initialisation. With ``texture_rgb`` the
            colour comes from the fixed RGB channels and the learned levels keep this
            initialisation (noise of this std); lowering it (e.g. to 0) is a training-preset
            choice, the default is unchanged so old configs rebuild the same model.
        texture_rgb: hold a fixed RGB texture (1,3,texture_size,texture_size) beside the learned
            features (module docstring); +3 generator input channels. Needs the UV texture
            (``body_features="texture"``). Default False: old configs and checkpoints load
            unchanged.
        texture_rgb_skip: with ``texture_rgb``, the foreground colour is
            ``sigmoid(logit(c) * body_mask + G_rgb)`` with c the RGB texture's colour at the pixel:
            the generator learns a residual on the video's colours instead of colours from
            scratch, so an untrained renderer already shows the baked texture at the driven pose.
        hand_channels: channels of the hand map (one per finger).
        face_channels: channels of the face map.
        base_channels: generator channels at its top resolution (S/2 with wavelets).
        max_channels: cap on generator channels at low resolutions.
        style_dim: style vector width (paper code: 512).
        latent_dim: per-frame latent width.
        mapping_layers: layers of the mapping MLP (paper code: 2).
        num_frames: rows of the per-frame latent table (max frame index + 1); ``None`` until
            the trainer resolves it from the dataset (then treated as 1).
        wavelet_output: Haar-wavelet ToRGB + inverse Haar (released RAM-Avatar code).
        alpha_mask_prior: initial value of a learned scale ``a`` adding ``a * (2 m - 1)`` to the
            alpha logit (m = body mask): the template silhouette is the starting guess of the
            person's alpha and the generator learns the residual (hair, loose clothes). 0 = off.
        alpha_prior_shell: full variant with spatial attention: the prior's mask is
            ``(m + m_e) / 2`` with ``m_e`` the expanded mesh's mask (``expand_offset``), i.e.
            ``+a`` inside the body, 0 in the shell between the body and the expanded mesh
            (loose clothes, hair: the generator decides) and ``-a`` outside. Default False
            (old configs and checkpoints unchanged). Without the expanded mesh's mask (renderer
            v1, or the spatial attention switched off) the plain prior ``2 m - 1`` applies.
        variant: ``v1`` (texture + raw maps) or ``full`` (module docstring). The fields below
            only matter for ``full``.
        body_features: ``texture`` (UV neural texture, ``texture_*`` fields) or ``triplane``
            (``triplane_*`` fields; needs the ``canon`` maps).
        triplane_channels: channels per plane (body map width = 3x this; released code 16).
        triplane_size: plane side (released code 512).
        spatial_attention: dual attention's spatial part (queries from the expanded mesh).
        temporal_attention: dual attention's temporal part (queries from the previous frame).
        attention_channels: channels at the attention's reduced resolution (released code 96).
        attention_qk_channels: query/key width (0 = attention_channels // 8).
        attention_downsample: stride-2 convs before the attention (2: 1024^2 -> 256^2).
        attention_recurrence: criss-cross passes (2).
        attention_distance_power: exponent p of the prior d = 1 / (|i-u|^p + 1) (0.8).
        attention_residual: body map = F + attention (True) or attention only (released code).
        attention_impl: ``einsum`` (efficient), ``reference`` / ``dense`` (tests only).
        expand_offset: metres the expanded mesh's vertices move along their normals (conditioning
            renderer; stored here so training and driving render the same F_e).
        face_branch: face map -> shallow UNet -> ``branch_channels`` (False: no face input).
        hand_branch: finger map -> shallow UNet -> ``branch_channels`` (False: no hand input).
        branch_channels: output channels of each branch (paper: 16).
        branch_hidden: hidden channels of the branches at full resolution.
        branch_depth: stride-2 levels of the branches' UNets.
    """

    resolution: int = 256
    texture_channels: int = 16
    texture_size: int = 256
    texture_levels: int = 4
    texture_init_std: float = 0.1
    texture_rgb: bool = False
    texture_rgb_skip: bool = False
    hand_channels: int = 5
    face_channels: int = 3
    base_channels: int = 16
    max_channels: int = 64
    style_dim: int = 64
    latent_dim: int = 32
    mapping_layers: int = 2
    num_frames: int | None = None
    wavelet_output: bool = True
    alpha_mask_prior: float = 3.0
    alpha_prior_shell: bool = False
    variant: str = "v1"
    body_features: str = "texture"
    triplane_channels: int = 16
    triplane_size: int = 512
    spatial_attention: bool = True
    temporal_attention: bool = True
    attention_channels: int = 96
    attention_qk_channels: int = 0
    attention_downsample: int = 2
    attention_recurrence: int = 2
    attention_distance_power: float = 0.8
    attention_residual: bool = True
    attention_impl: str = "einsum"
    expand_offset: float = 0.01
    face_branch: bool = True
    hand_branch: bool = True
    branch_channels: int = 16
    branch_hidden: int = 16
    branch_depth: int = 2

    @property
    def body_channels(self) -> int:
        """Channels of the body feature map F."""
        if self.variant == "full" and self.body_features == "triplane":
            return 3 * self.triplane_channels
        return self.texture_channels

    @property
    def in_channels(self) -> int:
        """Generator input channels.

        v1: texture C + hand + face + 1 body mask. full: body C + branch channels of each
        enabled branch + 1 body mask (paper: 48 + 16 + 16, plus the mask). Plus 3 RGB
        channels with ``texture_rgb``.
        """
        rgb = 3 if self.texture_rgb else 0
        if self.variant == "full":
            return (self.body_channels + rgb + self.branch_channels * (
                int(self.face_branch) + int(self.hand_branch)) + 1)
        return self.texture_channels + rgb + self.hand_channels + self.face_channels + 1

    @property
    def uses_attention(self) -> bool:
        return self.variant == "full" and (self.spatial_attention or self.temporal_attention)

    # -- sections: the parts of the renderer this config builds ------------------------------
    # Views of the flat fields (the stored and saved layout, so configs, checkpoints and
    # export.json files of every version load unchanged); AvatarRenderer builds its optional
    # modules from them.

    @property
    def body(self) -> TextureSection | TriplaneSection:
        """The body feature field: :class:`TriplaneSection` for ``variant="full"`` with
        ``body_features="triplane"``, else :class:`TextureSection` (v1 always uses the
        texture)."""
        if self.variant == "full" and self.body_features == "triplane":
            return TriplaneSection(self.triplane_channels, self.triplane_size,
                                   self.texture_init_std)
        return TextureSection(self.texture_channels, self.texture_size, self.texture_levels,
                              self.texture_init_std, self.texture_rgb, self.texture_rgb_skip)

    @property
    def attention(self) -> AttentionSection | None:
        """The dual attention, or None when it is not built (v1, or both parts off)."""
        if not self.uses_attention:
            return None
        return AttentionSection(self.spatial_attention, self.temporal_attention,
                                self.attention_channels, self.attention_qk_channels,
                                self.attention_downsample, self.attention_recurrence,
                                self.attention_distance_power, self.attention_residual,
                                self.attention_impl)

    @property
    def branches(self) -> BranchesSection | None:
        """The face/hand branches, or None when none is built (v1, or both off; v1 feeds the
        raw hand and face maps to the generator instead)."""
        if self.variant != "full" or not (self.face_branch or self.hand_branch):
            return None
        return BranchesSection(self.face_branch, self.hand_branch, self.hand_channels,
                               self.face_channels, self.branch_channels, self.branch_hidden,
                               self.branch_depth)

    def input_names(self) -> tuple[str, ...]:
        """Inputs the renderer reads for this config (base maps first, then extras in order).

        Disabled parts' inputs are dropped (e.g. no ``face`` without the face branch, no
        ``prev_*`` without temporal attention). The 4 base names stay in the signature of
        :meth:`AvatarRenderer.forward` in any case.
        """
        return renderer_inputs(self)  # the input contract (models.inputs)

    def data_extras(self) -> tuple[str, ...]:
        """Optional dataset/conditioning extras this config needs (``training.data`` flags):
        ``expanded``, ``canonical``, ``temporal`` (previous-frame maps)."""
        return data_extras(self.input_names())

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an invalid combination (unknown variant, bad sizes); runs when a
        config is built, e.g. ``RendererConfig(resolution=100)`` raises."""
        s = self.resolution
        if s < 16 or s & (s - 1):
            raise ValueError(f"model.resolution must be a power of two >= 16 (the StyleUNet "
                             f"halves it down to 8x8), got {s}")
        if self.texture_levels < 1 or self.texture_channels < 1 or \
                self.texture_size < 1 or (self.texture_size >> (self.texture_levels - 1)) < 1:
            raise ValueError(f"model.texture_levels and texture_channels must be >= 1 and "
                             f"texture_size {self.texture_size} must hold "
                             f"{self.texture_levels} levels")
        if self.base_channels < 1 or self.max_channels < self.base_channels:
            raise ValueError("model.base_channels must be >= 1 and <= model.max_channels")
        if self.mapping_layers < 1:
            raise ValueError("model.mapping_layers must be >= 1")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError("model.num_frames must be >= 1 (or None until training sets it)")
        if self.variant not in VARIANTS:
            raise ValueError(f"model.variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.body_features not in BODY_FEATURES:
            raise ValueError(f"model.body_features must be one of {BODY_FEATURES}, "
                             f"got {self.body_features!r}")
        if self.texture_rgb_skip and not self.texture_rgb:
            raise ValueError("model.texture_rgb_skip needs model.texture_rgb=True")
        if self.texture_rgb and self.variant == "full" and self.body_features != "texture":
            raise ValueError("model.texture_rgb needs the UV texture (body_features='texture'): "
                             "the RGB texture is sampled at the uv map")
        if self.attention_impl not in ("einsum", "reference", "dense"):
            raise ValueError(f"model.attention_impl must be einsum, reference or dense, "
                             f"got {self.attention_impl!r}")
        if self.variant == "full":
            if self.uses_attention and self.resolution % (2 ** self.attention_downsample):
                raise ValueError(f"model.resolution {self.resolution} is not divisible by "
                                 f"2^attention_downsample")
            if min(self.triplane_channels, self.triplane_size, self.attention_channels,
                   self.attention_recurrence, self.branch_channels, self.branch_hidden) < 1:
                raise ValueError("model triplane/attention/branch sizes must be >= 1")
            if self.attention_downsample < 0 or self.branch_depth < 0 or \
                    self.attention_qk_channels < 0:
                raise ValueError("model.attention_downsample, attention_qk_channels and "
                                 "branch_depth must be >= 0")

    def to_dict(self) -> dict:
        """The flat field mapping (the ``model`` section of config.yaml, checkpoints' metadata
        and export.json); :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str | None = None) -> "RendererConfig":
        """The one loader of a ``model`` section (a run's config.yaml, a training config, a
        checkpoint's or an export's record): every key must be a field, every value of the
        field's type (an int where a float is expected is accepted, so is YAML's ``1e-3``
        string); missing keys take their defaults (configs written before a field existed).

        Args:
            data: flat mapping field name -> value (:meth:`to_dict`).
            where: prefix of error messages (e.g. the config file's path), or None.
        Raises:
            ValueError: not a mapping, unknown keys, wrong types, or an invalid combination
                (:meth:`validate`); the message starts with ``where`` and names the key as
                ``model.<field>``.
        """
        at = f"{where}: " if where else ""
        if not isinstance(data, Mapping):
            raise ValueError(f"{at}the renderer config must be a mapping of fields, got "
                             f"{type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{at}unknown renderer config key(s) "
                             f"{', '.join('model.' + str(k) for k in unknown)}; valid keys: "
                             f"{', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _coerce(f"model.{k}", v, hints[k], at) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{at}{e}") from None


def _coerce(name: str, value, tp, at: str):
    """``value`` as type ``tp`` (bool, int, float, str or a union of them with None)."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    args = typing.get_args(tp) if union else (tp,)
    if value is None and type(None) in args:
        return None
    for a in args:
        if a is bool and isinstance(value, bool):
            return value
        if a is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        if a is str and isinstance(value, str):
            return value
    raise ValueError(f"{at}{name} = {value!r} is not of type {getattr(tp, '__name__', tp)}")


class AvatarRenderer(nn.Module):
    """Body features -> (dual attention, branches) -> StyleUNet -> compositing over a learned
    background (variants in the module docstring).

    Args:
        config: :class:`RendererConfig`.

    Inputs (S = ``config.resolution``): ``uv (B,2,S,S)`` in [0,1] (0 on background),
    ``body_mask (B,1,S,S)``, ``hand (B,5,S,S)``, ``face (B,3,S,S)``, ``frame_index (B,) int``
    or ``None`` (mean training latent; used for unseen frames and at test time). Full variant,
    keyword-only: ``uv_expanded (B,2,S,S)``, ``body_mask_expanded (B,1,S,S)``,
    ``prev_uv (B,2,S,S)``, ``prev_body_mask (B,1,S,S)``, ``canon / canon_expanded / prev_canon
    (B,3,S,S)`` in [-1,1] (triplane). Inputs of disabled parts may be None.

    Raises:
        ValueError: invalid config (:meth:`RendererConfig.validate`); triplane without ``canon``.

    Returns:
        dict with ``rgb (B,3,S,S)`` composited image in [0,1], ``alpha (B,1,S,S)`` in [0,1],
        ``fg (B,3,S,S)`` foreground colour in [0,1], ``alpha_logit (B,1,S,S)`` (for the BCE
        mask loss) and ``background (1,3,S,S)`` in [0,1].
    """

    def __init__(self, config: RendererConfig | None = None) -> None:
        super().__init__()
        config = config or RendererConfig()
        config.validate()
        self.config = config
        self._warned: set[str] = set()
        # the shell prior needs the expanded mesh's mask among the inputs (spatial attention)
        self._shell_prior = config.alpha_prior_shell and "body_mask_expanded" in config.input_names()
        body, attention, branches = config.body, config.attention, config.branches
        if isinstance(body, TriplaneSection):
            from ram_avatar.models.triplane import Triplane

            self.triplane = Triplane(body.channels, body.size, body.init_std)
        else:
            self.texture = NeuralTexture(body.channels, body.size, body.levels, body.init_std,
                                         rgb=body.rgb)
        if attention is not None:
            from ram_avatar.models.dual_attention import DualAttention

            self.attention = DualAttention(
                config.body_channels, hidden=attention.channels,
                qk_channels=attention.qk_channels or None, downsample=attention.downsample,
                recurrence=attention.recurrence, distance_power=attention.distance_power,
                spatial=attention.spatial, temporal=attention.temporal,
                residual=attention.residual, impl=attention.impl)
        if branches is not None:
            from ram_avatar.models.branches import ShallowUNet

            if branches.hand:
                self.hand_branch = ShallowUNet(branches.hand_in, branches.channels,
                                               branches.hidden, branches.depth)
            if branches.face:
                self.face_branch = ShallowUNet(branches.face_in, branches.channels,
                                               branches.hidden, branches.depth)
        # the parts built, decided once from the config's sections
        self._triplane = isinstance(body, TriplaneSection)
        self._attention = attention is not None
        self._hand_branch = branches is not None and branches.hand
        self._face_branch = branches is not None and branches.face
        self.generator = StyleUNet(
            in_channels=config.in_channels, out_channels=4, size=config.resolution,
            base_channels=config.base_channels, max_channels=config.max_channels,
            style_dim=config.style_dim, latent_dim=config.latent_dim,
            mapping_layers=config.mapping_layers, num_frames=config.num_frames or 1,
            wavelet_output=config.wavelet_output,
        )
        s = config.resolution
        # stored as a logit so the background stays in [0,1]; 0 -> grey 0.5
        self.background_logit = nn.Parameter(torch.zeros(1, 3, s, s))
        self.alpha_prior = nn.Parameter(torch.tensor(float(config.alpha_mask_prior)))

    def background(self) -> torch.Tensor:
        """The learned background image ``(1,3,S,S)`` in [0,1]."""
        return torch.sigmoid(self.background_logit)

    @property
    def body_features(self) -> nn.Module:
        """The learnable body feature field: the UV :class:`NeuralTexture` or the triplane."""
        return self.triplane if self._triplane else self.texture

    @torch.no_grad()
    def set_rgb_texture(self, texture: torch.Tensor) -> None:
        """Load the fixed RGB texture (``config.texture_rgb``): ``texture (1,3,H,W)`` float in
        [0,1] in the neural texture's uv layout (row 0 = v 1, e.g. ``sequence/texture.png`` via
        :func:`ram_avatar.render.texture_bake.load_texture`), resized to ``texture_size``.

        Raises:
            ValueError: the config has ``texture_rgb`` off, or ``texture`` has a wrong shape.
        """
        if not self.config.texture_rgb:
            raise ValueError("set_rgb_texture needs model.texture_rgb=True in the renderer config")
        self.texture.set_rgb_texture(texture)

    def rgb_texture_parameter(self) -> nn.Parameter | None:
        """The RGB texture ``(1,3,texture_size,texture_size)`` (``config.texture_rgb``) as the
        parameter training may optimise (``optim.rgb_texture_lr_mult``), or None without it."""
        return self.texture.rgb_texture if self.config.texture_rgb else None

    @torch.no_grad()
    def zero_init_residual(self) -> None:
        """Set the generator's ToRGB convolution weights to zero (``optim.zero_init_residual``):
        with ``texture_rgb_skip`` the untrained renderer then draws exactly the baked colour
        inside the body and the alpha prior's matte (its residual on them is zero). Gradients
        reach the ToRGB weights at once and the layers below them from the second step."""
        for to_rgb in [self.generator.to_rgb_in, *self.generator.to_rgbs]:
            to_rgb.conv.weight.zero_()

    def input_names(self) -> tuple[str, ...]:
        """Inputs this renderer reads (see :meth:`RendererConfig.input_names`)."""
        return self.config.input_names()

    def _missing(self, name: str, stand_in: str) -> None:
        if name not in self._warned and not torch.jit.is_tracing():
            self._warned.add(name)
            log.warning("renderer input %r missing: using %r in its place (render the dataset "
                        "with the extras of RendererConfig.data_extras())", name, stand_in)

    def sample_stacked(self, coords: torch.Tensor, masks: torch.Tensor,
                       rgb_batch: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample the body features at maps stacked on the batch axis, in one pass (the texture
        pyramid is collapsed once): ``coords (N,2|3,S,S)`` (uv or canon) and ``masks
        (N,1,S,S)`` -> ``features (N,body_channels,S,S)`` and the fixed RGB texture's colour at
        the first ``rgb_batch`` maps ``(rgb_batch,3,S,S)`` (None without ``texture_rgb``, with
        the triplane or with ``rgb_batch`` 0)."""
        if self._triplane:
            return self.triplane(coords, masks), None
        return self.texture.sample(coords, masks, rgb_batch if self.config.texture_rgb else 0)

    def body_map(self, uv: torch.Tensor | None, body_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Body feature map ``(B, body_channels, S, S)``: sampled features, through the dual
        attention when it is enabled (full variant). ``extra`` as in :meth:`forward`."""
        return self.body_and_rgb(uv, body_mask, **extra)[0]

    def body_and_rgb(self, uv: torch.Tensor | None, body_mask: torch.Tensor,
                     **extra) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`body_map` and the fixed RGB texture's colour at ``uv`` ``(B,3,S,S)`` (zero off
        the body; None without ``texture_rgb``), from one sampling pass. The attention sees
        the learned features only.

        The current, expanded and previous maps are stacked on the batch axis once and stay
        stacked through the attention's shared convolutions
        (:meth:`~ram_avatar.models.dual_attention.DualAttention.forward_stacked`); only the
        current map gets the RGB colour (issue 13: no full-resolution slices of the sampled
        stack, 3 of 19 channels sampled at one map instead of three)."""
        tri = self._triplane
        key = "canon" if tri else "uv"
        coords = extra.get("canon") if tri else uv
        if coords is None:
            raise ValueError("the triplane renderer needs the 'canon' map (canonical positions)")
        attention = self.attention if self._attention else None
        batch = body_mask.shape[0]
        if attention is None:
            return self.sample_stacked(coords, body_mask, batch)
        cs, ms = [coords], [body_mask]
        rows: dict[str, int] = {}  # attention part -> its block in the stacked sampling
        for part, c_name, m_name in (("spatial", f"{key}_expanded", "body_mask_expanded"),
                                     ("temporal", f"prev_{key}", "prev_body_mask")):
            if getattr(attention, part) is None:
                continue
            c, m = extra.get(c_name), extra.get(m_name)
            if c is None or m is None:
                self._missing(c_name, key)
            else:
                rows[part] = len(cs)
                cs.append(c)
                ms.append(m)
        stacked, rgb = self.sample_stacked(torch.cat(cs) if len(cs) > 1 else coords,
                                           torch.cat(ms) if len(ms) > 1 else body_mask, batch)
        return attention.forward_stacked(stacked, batch, rows), rgb

    def forward(self, uv: torch.Tensor | None, body_mask: torch.Tensor,
                hand: torch.Tensor | None = None, face: torch.Tensor | None = None,
                frame_index: torch.Tensor | None = None, *,
                uv_expanded: torch.Tensor | None = None,
                body_mask_expanded: torch.Tensor | None = None,
                prev_uv: torch.Tensor | None = None,
                prev_body_mask: torch.Tensor | None = None,
                canon: torch.Tensor | None = None,
                canon_expanded: torch.Tensor | None = None,
                prev_canon: torch.Tensor | None = None) -> dict:
        if frame_index is not None and not isinstance(frame_index, torch.Tensor):
            frame_index = torch.as_tensor(frame_index, device=body_mask.device)
        if self.config.variant == "full":
            body, rgb = self.body_and_rgb(uv, body_mask, uv_expanded=uv_expanded,
                                          body_mask_expanded=body_mask_expanded, prev_uv=prev_uv,
                                          prev_body_mask=prev_body_mask, canon=canon,
                                          canon_expanded=canon_expanded, prev_canon=prev_canon)
            tex_rgb = rgb
            parts = [body] if rgb is None else [body, rgb]
            if self._hand_branch:
                parts.append(self.hand_branch(hand))
            if self._face_branch:
                parts.append(self.face_branch(face))
            x = torch.cat(parts + [body_mask], dim=1)
        else:
            features = self.texture(uv, body_mask)  # learned features (+ RGB with texture_rgb)
            tex_rgb = features[:, -3:] if self.config.texture_rgb else None
            x = torch.cat([features, hand, face, body_mask], dim=1)
        out = self.generator(x, frame_index)
        fg_logit = out[:, :3]
        if self.config.texture_rgb_skip and tex_rgb is not None:
            # the generator predicts a residual on the baked colour (in logit space): the first
            # render already shows the person's texture at the driven pose
            fg_logit = fg_logit + body_mask * torch.logit(tex_rgb.clamp(0.02, 0.98))
        fg = torch.sigmoid(fg_logit)
        if self._shell_prior and body_mask_expanded is not None:
            prior = body_mask + body_mask_expanded - 1.0  # +1 body, 0 shell, -1 outside
        else:
            prior = 2.0 * body_mask - 1.0
        alpha_logit = out[:, 3:4] + self.alpha_prior * prior
        alpha = torch.sigmoid(alpha_logit)
        bg = self.background()
        rgb = alpha * fg + (1.0 - alpha) * bg
        return {"rgb": rgb, "alpha": alpha, "fg": fg, "alpha_logit": alpha_logit,
                "background": bg}

    def forward_batch(self, batch: dict, frame_index: torch.Tensor | None = None) -> dict:
        """:meth:`forward` on a dataset batch: takes the base maps and whichever extra maps
        (:data:`EXTRA_INPUTS`) the batch holds; other keys are ignored."""
        extra = {k: batch[k] for k in EXTRA_INPUTS if k in batch} \
            if self.config.variant == "full" else {}
        return self(batch.get("uv"), batch["body_mask"], batch.get("hand"), batch.get("face"),
                    frame_index, **extra)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

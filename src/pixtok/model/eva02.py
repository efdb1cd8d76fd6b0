"""The EVA02 image tower: timm's ``Eva`` as a patch-feature extractor, and its weight loader.

The network is ``timm.models.eva.Eva`` built (never downloaded) from :class:`PixtokEva02Config`'s
keyword arguments with ``num_classes=0``; its parameters keep timm's names under the prefix ``eva.``,
so a timm EVA02 checkpoint loads 1:1. The tower returns the patch tokens of the last block after the
checkpoint's final LayerNorm (``norm``, or ``fc_norm`` for the average-pooled classification
checkpoints — LayerNorm acts per token, so applying it to every patch token is well defined), laid
out as a feature map; class/register tokens are dropped.

:func:`pad_mlp_hidden` is an inference-time transform that zero-pads the SwiGLU hidden width (2730
in EVA02-L) to a multiple of 8, so that bf16 matrix products run on aligned kernels; same output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers.mlp import SwiGLU
from timm.models.eva import Eva
from torch import Tensor, nn

from .configuration_towers import PixtokEva02Config
from .patch_embedding import use_patch_matmul
from .sam import _check_pixels, _module_dtype

_HEAD_KEYS = ("head.weight", "head.bias")


class Eva02Encoder(nn.Module):
    """EVA02 ViT giving patch features on its own grid; its patch embedding runs as one matrix
    product (:class:`~pixtok.model.patch_embedding.PatchConv2d`).

    Gradient checkpointing: the ``gradient_checkpointing`` attribute forwards to timm's
    ``set_grad_checkpointing``, so an enclosing ``PreTrainedModel.gradient_checkpointing_enable()``
    reaches it.

    Args:
        config: the EVA02 config (``img_size`` E, ``patch_size`` p, ``embed_dim`` D).
    """

    def __init__(self, config: PixtokEva02Config) -> None:
        super().__init__()
        self.config = config
        self.eva = Eva(**config.timm_kwargs())
        use_patch_matmul(self.eva.patch_embed)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether the timm blocks recompute activations in the backward pass."""
        return bool(self.eva.grad_checkpointing)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.eva.set_grad_checkpointing(bool(enable))

    @property
    def image_size(self) -> int:
        """Side E of the square input, pixels."""
        return int(self.config.img_size)

    @property
    def grid_size(self) -> int:
        """Side E / p of the output feature map."""
        return self.config.grid_size

    @property
    def output_channels(self) -> int:
        """Channels D of the output feature map."""
        return int(self.config.embed_dim)

    def reset_non_persistent_buffers(self) -> None:
        """Recompute the buffers that checkpoints do not hold (timm's rotary tables ``rope.*``).

        ``PreTrainedModel.from_pretrained`` builds on the meta device and leaves non-persistent
        buffers as uninitialized memory; call this afterwards (e.g. from ``_init_weights`` on an
        ``Eva02Encoder``). The tables depend on the config only; they are taken from a block-less
        ``Eva`` built on the CPU (cheap), placed on each buffer's device (CPU if it is on meta) and dtype.
        """
        persistent = set(self.eva.state_dict())
        names = [name for name, _ in self.eva.named_buffers() if name not in persistent]
        if not names:
            return
        with torch.device("cpu"):
            fresh = dict(Eva(**{**self.config.timm_kwargs(), "depth": 0}).named_buffers())
        for name in names:
            if name not in fresh:
                raise RuntimeError(
                    f"cannot recompute EVA02 buffer {name!r}: it lives outside the block-less network"
                )
            owner_name, _, leaf = name.rpartition(".")
            owner = self.eva.get_submodule(owner_name) if owner_name else self.eva
            current = getattr(owner, leaf)
            device = torch.device("cpu") if current.device.type == "meta" else current.device
            owner.register_buffer(leaf, fresh[name].to(device=device, dtype=current.dtype), persistent=False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode images.

        Args:
            pixel_values: (B, 3, E, E) float, CLIP-normalized, long side resized to E and padded
                bottom/right. Cast to the encoder's dtype.

        Returns:
            (B, D, E/p, E/p) patch features (row-major grid, row = y).
        """
        _check_pixels(pixel_values, int(self.config.num_channels), self.image_size, "EVA02 eva_pixel_values")
        tokens = self.eva.forward_features(pixel_values.to(_module_dtype(self)))
        tokens = self.eva.fc_norm(tokens[:, self.eva.num_prefix_tokens :])  # Identity unless avg-pool layout
        batch, _, channels = tokens.shape
        g = self.grid_size
        return tokens.transpose(1, 2).reshape(batch, channels, g, g)


def _padded_linear(linear: nn.Linear, rows: int = 0, columns: int = 0) -> nn.Linear:
    """``linear`` with ``rows`` zero output rows (weight and bias) and ``columns`` zero input columns."""
    with torch.device("meta"):  # no init, no RNG drawn
        padded = nn.Linear(
            linear.in_features + columns, linear.out_features + rows, bias=linear.bias is not None
        )
    padded.weight = nn.Parameter(
        F.pad(linear.weight.detach(), (0, columns, 0, rows)), linear.weight.requires_grad
    )
    if linear.bias is not None:
        padded.bias = nn.Parameter(F.pad(linear.bias.detach(), (0, rows)), linear.bias.requires_grad)
    return padded


class _PrefixLayerNorm(nn.Module):
    """LayerNorm over the first ``real`` channels of a zero-padded last dimension; padded channels give 0.

    Statistics in float32 over the real channels only (the padding is masked out, so it neither
    shifts the mean nor dilutes the variance); weight and bias are zero-padded.
    """

    def __init__(self, norm: nn.LayerNorm, padded: int) -> None:
        super().__init__()
        (self.real,) = norm.normalized_shape
        self.eps = norm.eps
        pad = padded - self.real
        self.weight = nn.Parameter(F.pad(norm.weight.detach(), (0, pad))) if norm.weight is not None else None
        self.bias = nn.Parameter(F.pad(norm.bias.detach(), (0, pad))) if norm.bias is not None else None

    def forward(self, hidden: Tensor) -> Tensor:
        real = torch.arange(hidden.shape[-1], device=hidden.device) < self.real
        h = torch.where(real, hidden.float(), 0.0)
        centered = torch.where(real, h - h.sum(-1, keepdim=True) / self.real, 0.0)
        variance = centered.square().sum(-1, keepdim=True) / self.real
        out = centered * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(hidden.dtype)


class PaddedSwiGLU(nn.Module):
    """timm's ``SwiGLU`` with its hidden width zero-padded to ``padded`` channels; same output.

    ``fc1_g``/``fc1_x`` get zero output rows and ``fc2`` zero input columns, so the padded hidden
    channels are silu(0) * 0 = 0 and add nothing; the hidden LayerNorm (``scale_mlp``) normalizes
    over the real channels only. Submodule names are SwiGLU's.

    Args:
        mlp: the SwiGLU to copy (its hidden ``norm`` an ``nn.LayerNorm`` or ``nn.Identity``).
        padded: the new hidden width, at least the old one.
    """

    def __init__(self, mlp: SwiGLU, padded: int) -> None:
        super().__init__()
        pad = padded - mlp.fc2.in_features
        self.fc1_g = _padded_linear(mlp.fc1_g, rows=pad)
        self.fc1_x = _padded_linear(mlp.fc1_x, rows=pad)
        self.act = mlp.act
        self.drop1 = mlp.drop1
        self.norm = _PrefixLayerNorm(mlp.norm, padded) if isinstance(mlp.norm, nn.LayerNorm) else mlp.norm
        self.fc2 = _padded_linear(mlp.fc2, columns=pad)
        self.drop2 = mlp.drop2

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.act(self.fc1_g(x)) * self.fc1_x(x)
        return self.drop2(self.fc2(self.norm(self.drop1(hidden))))


@torch.no_grad()
def pad_mlp_hidden(module: nn.Module, multiple: int = 8) -> int:
    """Zero-pad the hidden width of every timm ``SwiGLU`` inside ``module`` to a multiple of ``multiple``.

    For bf16 speed: EVA02-L's hidden width 2730 sends cuBLAS to slow unaligned kernels; 2736 does
    not. Each SwiGLU whose hidden width is not a multiple (and whose hidden norm is a LayerNorm or
    absent) is replaced in place by a :class:`PaddedSwiGLU` with the same output, on the same
    device and dtype; a SwiGLU that is ``module`` itself is left alone.

    An inference/benchmark-time transform: it changes parameter shapes, so apply it after loading
    weights, and do not ``save_pretrained`` (or load checkpoints into) the padded model.

    Args:
        module: an :class:`Eva02Encoder`, a timm ``Eva``, or any model containing them.
        multiple: the hidden width to round up to.

    Returns:
        How many SwiGLU modules were replaced (0 on a second call).
    """
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, SwiGLU)
        and child.fc2.in_features % multiple
        and isinstance(child.norm, (nn.Identity, nn.LayerNorm))
    ]
    for parent, name, child in targets:
        hidden = child.fc2.in_features
        setattr(parent, name, PaddedSwiGLU(child, hidden + (-hidden % multiple)))
    return len(targets)


def _read_state_dict_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(
            f"{path} holds a {type(state_dict).__name__}, expected a state dict (a mapping of tensors)"
        )
    for wrapper in ("state_dict", "model", "module"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
            break
    return dict(state_dict)


def load_timm_eva02(
    name_or_path: str | Path, *, pretrained_file: str | Path | None = None
) -> dict[str, Tensor]:
    """Read EVA02 weights for :class:`Eva02Encoder`.

    Args:
        name_or_path: a local ``.safetensors``/``.pth``/``.pt``/``.bin`` file in timm's key layout
            (read with ``weights_only=True``; a ``state_dict``/``model``/``module`` wrapper is
            unwrapped), or a timm model name such as ``"eva02_large_patch14_448.mim_m38m_ft_in22k_in1k"``,
            whose pretrained weights timm itself fetches and filters.
        pretrained_file: with a timm name, load the pretrained weights from this local file instead of
            the Hub (timm's ``pretrained_cfg_overlay={"file": ...}``).

    Returns:
        A state dict with keys ``eva.*`` (timm's names; the classifier ``head`` is dropped).
    """
    path = Path(name_or_path)
    if path.is_file():
        state_dict = _read_state_dict_file(path)
    elif path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise FileNotFoundError(f"EVA02 checkpoint not found: {path}")
    else:
        import timm

        overlay = {"file": str(pretrained_file)} if pretrained_file is not None else None
        try:
            model = timm.create_model(
                str(name_or_path), pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay
            )
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise ValueError(
                    f"{name_or_path!r} is neither an existing file nor a timm model name"
                ) from error
            raise
        state_dict = model.state_dict()
    return {f"eva.{key}": tensor for key, tensor in state_dict.items() if key not in _HEAD_KEYS}


__all__ = ["Eva02Encoder", "PaddedSwiGLU", "load_timm_eva02", "pad_mlp_hidden"]

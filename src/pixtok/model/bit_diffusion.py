"""Bit diffusion for Pix2Seq-D: integers <-> bits <-> analog bits, the noise schedule, DDIM.

A panoptic mask is two integer maps at mask resolution, ``class_map`` and ``instance_map``
(``(B, Hm, Wm)`` long). Each pixel is written as ``class_bits + instance_bits`` binary digits,
class bits first, each group most-significant bit first, as channels::

    bits[:, :class_bits]   = binary(class value)      class value 0 = void, c + 1 = label id c
    bits[:, class_bits:]   = binary(instance id)      0 = no instance (stuff or void)

Analog bits map ``{0, 1}`` to ``{-scale, +scale}`` (Pix2Seq-D: ``scale = 0.1``). Thresholding at 0
inverts the map, so the round trip ints -> bits -> analog -> bits -> ints is exact for every value
that fits in the bit width; :class:`PanopticBitCodec` refuses values that do not fit.

Diffusion follows Chen et al. (Bit Diffusion, Pix2Seq-D) in continuous time ``t`` in ``[0, 1]``:
``x_t = sqrt(gamma(t)) * x_0 + sqrt(1 - gamma(t)) * eps`` with the cosine schedule
:func:`cosine_gamma`; the network predicts ``x_0`` (the clean analog bits), optionally
conditioned on its own previous ``x_0`` estimate (self-conditioning); sampling is DDIM with
``num_steps`` steps and a *time difference* ``td`` (the asymmetric time intervals of Bit
Diffusion: the next time is ``td / num_steps`` earlier than the plain grid says).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

# --- integers <-> bits ---------------------------------------------------------------------------


def int_to_bits(values: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Write non-negative integers as binary digits, most significant first.

    Args:
        values: (...) integer tensor, every entry in ``[0, 2**num_bits)``.
        num_bits: number of binary digits.

    Returns:
        (..., num_bits) long tensor of 0/1.

    Raises:
        ValueError: if a value is negative or needs more than ``num_bits`` digits.
    """
    if num_bits < 1 or num_bits > 62:
        raise ValueError(f"num_bits must be in [1, 62], got {num_bits}")
    values = values.long()
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= (1 << num_bits)):
        raise ValueError(
            f"values must lie in [0, {1 << num_bits}) to fit in {num_bits} bits; "
            f"got range [{int(values.min())}, {int(values.max())}]"
        )
    shifts = torch.arange(num_bits - 1, -1, -1, device=values.device)
    return (values.unsqueeze(-1) >> shifts) & 1


def bits_to_int(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`int_to_bits`.

    Args:
        bits: (..., num_bits) tensor of 0/1 (any dtype), most significant first.

    Returns:
        (...) long tensor.
    """
    num_bits = bits.shape[-1]
    weights = 1 << torch.arange(num_bits - 1, -1, -1, device=bits.device)
    return (bits.long() * weights).sum(-1)


def bits_to_analog(bits: torch.Tensor, scale: float) -> torch.Tensor:
    """Map binary digits ``{0, 1}`` to analog bits ``{-scale, +scale}`` (float32)."""
    return (bits.float() * 2.0 - 1.0) * scale


def analog_to_bits(analog: torch.Tensor) -> torch.Tensor:
    """Threshold analog bits at zero: ``> 0`` is 1, else 0 (long)."""
    return (analog > 0).long()


@dataclass(frozen=True)
class PanopticBitCodec:
    """(class, instance) maps <-> analog bit channels.

    Args:
        class_bits: digits for the class value (``0`` = void, ``c + 1`` = label id ``c``).
        instance_bits: digits for the instance id (``0`` = no instance).
        scale: analog bit magnitude ``b``; bits are ``{-b, +b}``.
    """

    class_bits: int
    instance_bits: int
    scale: float = 0.1

    def __post_init__(self) -> None:
        if self.class_bits < 1 or self.instance_bits < 1:
            raise ValueError(
                f"class_bits and instance_bits must both be >= 1, got {self.class_bits}, {self.instance_bits}"
            )
        if not self.scale > 0:
            raise ValueError(f"analog bit scale must be positive, got {self.scale}")

    @property
    def num_bits(self) -> int:
        """Channels of the analog bit map, ``class_bits + instance_bits``."""
        return self.class_bits + self.instance_bits

    @property
    def max_class_value(self) -> int:
        """Largest storable class value (``num_labels`` labels need ``num_labels <= max_class_value``)."""
        return (1 << self.class_bits) - 1

    @property
    def max_instance_id(self) -> int:
        """Largest storable instance id; an image may hold at most this many instances."""
        return (1 << self.instance_bits) - 1

    def encode_bits(self, class_map: torch.Tensor, instance_map: torch.Tensor) -> torch.Tensor:
        """(class, instance) maps -> binary digits.

        Args:
            class_map: (B, H, W) long, class values in ``[0, max_class_value]``.
            instance_map: (B, H, W) long, instance ids in ``[0, max_instance_id]``.

        Returns:
            (B, num_bits, H, W) long 0/1, class digits first.
        """
        if class_map.shape != instance_map.shape:
            raise ValueError(
                f"class map {tuple(class_map.shape)} and instance map {tuple(instance_map.shape)} differ"
            )
        try:
            cls = int_to_bits(class_map, self.class_bits)
        except ValueError as err:
            raise ValueError(f"class map: {err}") from None
        try:
            ins = int_to_bits(instance_map, self.instance_bits)
        except ValueError as err:
            raise ValueError(f"instance map: {err} (more instances than the id bits can hold?)") from None
        return torch.cat([cls, ins], dim=-1).movedim(-1, -3)

    def decode_bits(self, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary digits (B, num_bits, H, W) -> (class_map, instance_map), each (B, H, W) long."""
        if bits.shape[-3] != self.num_bits:
            raise ValueError(
                f"expected {self.num_bits} bit channels at dim -3, got shape {tuple(bits.shape)}"
            )
        digits = bits.movedim(-3, -1)
        return bits_to_int(digits[..., : self.class_bits]), bits_to_int(digits[..., self.class_bits :])

    def pack(self, class_map: torch.Tensor, instance_map: torch.Tensor) -> torch.Tensor:
        """(class, instance) maps -> one packed id map ``class * 2**instance_bits + instance``.

        The packed id's ``num_bits`` binary digits are exactly the bit channels of
        :meth:`encode_bits` (class digits first), so ``panoptic_ids`` is a lossless one-tensor
        batch format.

        Args:
            class_map, instance_map: (...) long, within the codec's ranges.

        Returns:
            (...) long packed ids in ``[0, 2**num_bits)``.
        """
        if class_map.shape != instance_map.shape:
            raise ValueError(
                f"class map {tuple(class_map.shape)} and instance map {tuple(instance_map.shape)} differ"
            )
        for name, values, top in (
            ("class", class_map, self.max_class_value),
            ("instance", instance_map, self.max_instance_id),
        ):
            if values.numel() and (int(values.min()) < 0 or int(values.max()) > top):
                raise ValueError(
                    f"{name} map values must lie in [0, {top}]; got range [{int(values.min())}, {int(values.max())}]"
                )
        return (class_map.long() << self.instance_bits) | instance_map.long()

    def unpack(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed ids (...) -> (class_map, instance_map), each (...) long; inverse of :meth:`pack`."""
        ids = ids.long()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= (1 << self.num_bits)):
            raise ValueError(
                f"packed panoptic ids must lie in [0, {1 << self.num_bits}) for {self.class_bits} class + "
                f"{self.instance_bits} instance bits; got range [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids >> self.instance_bits, ids & self.max_instance_id

    def encode(self, class_map: torch.Tensor, instance_map: torch.Tensor) -> torch.Tensor:
        """(class, instance) maps (B, H, W) -> analog bits (B, num_bits, H, W) float in ``{-b, +b}``."""
        return bits_to_analog(self.encode_bits(class_map, instance_map), self.scale)

    def decode(self, analog: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Analog bits (B, num_bits, H, W), any real values -> (class_map, instance_map) (B, H, W) long."""
        return self.decode_bits(analog_to_bits(analog))


# --- noise schedule ------------------------------------------------------------------------------


def cosine_gamma(t: torch.Tensor, offset: float = 0.008, min_gamma: float = 1e-6) -> torch.Tensor:
    """Cosine schedule ``gamma(t)``: the signal fraction of ``x_t`` (alpha-bar of DDPM).

    ``gamma(t) = cos(pi/2 * (t + s) / (1 + s))**2 / cos(pi/2 * s / (1 + s))**2``, so
    ``gamma(0) = 1`` (clean) and ``gamma(1) = 0`` (pure noise), clamped to
    ``[min_gamma, 1 - min_gamma]`` so that ``x_0`` and ``eps`` stay recoverable at both ends.

    Args:
        t: (...) float times in ``[0, 1]``.
        offset: the small shift ``s`` that keeps the slope finite near ``t = 0``.
        min_gamma: clamp margin.

    Returns:
        (...) float, decreasing in ``t``.
    """
    t = t.float()
    norm = math.cos(math.pi / 2 * offset / (1 + offset)) ** 2
    gamma = torch.cos(math.pi / 2 * (t + offset) / (1 + offset)) ** 2 / norm
    return gamma.clamp(min_gamma, 1.0 - min_gamma)


NOISE_SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"cosine": cosine_gamma}
"""Schedule name (``PixtokPanopticConfig.noise_schedule``) -> ``gamma(t)``."""


def get_schedule(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Look up a noise schedule by name, with a clear error for unknown names."""
    try:
        return NOISE_SCHEDULES[name]
    except KeyError:
        raise ValueError(
            f"unknown noise schedule {name!r}; expected one of {sorted(NOISE_SCHEDULES)}"
        ) from None


def _expand(gamma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) broadcastable against ``like`` (B, K, H, W)."""
    return gamma.reshape(gamma.shape + (1,) * (like.dim() - gamma.dim()))


def q_sample(x0: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Forward process ``x_t = sqrt(gamma) x_0 + sqrt(1 - gamma) eps``.

    Args:
        x0: (B, K, H, W) clean analog bits.
        gamma: (B,) signal fraction at each sample's time.
        noise: (B, K, H, W) standard normal noise; drawn when omitted.

    Returns:
        (B, K, H, W) noisy analog bits.
    """
    if noise is None:
        noise = torch.randn_like(x0)
    g = _expand(gamma.to(x0.dtype), x0)
    return g.sqrt() * x0 + (1 - g).sqrt() * noise


def predict_noise(x_t: torch.Tensor, x0_pred: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Recover ``eps`` from ``x_t`` and an ``x_0`` estimate: ``(x_t - sqrt(g) x_0) / sqrt(1 - g)``."""
    g = _expand(gamma.to(x_t.dtype), x_t)
    return (x_t - g.sqrt() * x0_pred) / (1 - g).sqrt()


def ddim_step(
    x_t: torch.Tensor, x0_pred: torch.Tensor, gamma_now: torch.Tensor, gamma_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM update from time ``now`` to time ``next`` given the ``x_0`` estimate.

    Args:
        x_t: (B, K, H, W) current sample.
        x0_pred: (B, K, H, W) network estimate of the clean bits.
        gamma_now, gamma_next: (B,) schedule at the current and the next time.

    Returns:
        (B, K, H, W) sample at the next time.
    """
    eps = predict_noise(x_t, x0_pred, gamma_now)
    g = _expand(gamma_next.to(x_t.dtype), x_t)
    return g.sqrt() * x0_pred + (1 - g).sqrt() * eps


def ddim_times(num_steps: int, td: float = 0.0) -> list[tuple[float, float]]:
    """The (t_now, t_next) pairs of a DDIM run of ``num_steps`` steps from t = 1 to t = 0.

    ``t_now = 1 - i / num_steps`` and ``t_next = max(1 - (i + 1 + td) / num_steps, 0)``
    (Bit Diffusion's asymmetric time intervals; ``td = 0`` is plain DDIM).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if td < 0 or td >= num_steps:
        raise ValueError(f"time difference td must be in [0, num_steps), got {td}")
    return [(1.0 - i / num_steps, max(1.0 - (i + 1 + td) / num_steps, 0.0)) for i in range(num_steps)]


DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t (B,K,H,W), self_cond (B,K,H,W), t (B,)) -> x0_pred (B,K,H,W)``."""


@torch.no_grad()
def ddim_sample(
    denoise: DenoiseFn,
    shape: tuple[int, ...],
    num_steps: int,
    td: float = 0.0,
    scale: float = 0.1,
    self_condition: bool = True,
    schedule: Callable[[torch.Tensor], torch.Tensor] = cosine_gamma,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw clean analog bits by DDIM from pure noise.

    Args:
        denoise: the network, ``(x_t, self_cond, t) -> x0_pred`` (see :data:`DenoiseFn`).
        shape: (B, K, H, W) of the analog bit map.
        num_steps: DDIM steps.
        td: time difference (see :func:`ddim_times`).
        scale: analog bit magnitude ``b``; ``x0`` estimates are clipped to ``[-b, b]``.
        self_condition: feed the previous ``x0`` estimate back (zeros at the first step).
        schedule: ``gamma(t)``.
        generator: RNG for the initial noise.
        device: where to sample.

    Returns:
        (B, K, H, W) the last ``x0`` estimate (clipped to ``[-b, b]``); threshold at 0 for bits.
    """
    x_t = torch.randn(shape, generator=generator, device=device)
    x0_pred = torch.zeros_like(x_t)
    batch = shape[0]
    for t_now, t_next in ddim_times(num_steps, td):
        t = torch.full((batch,), t_now, device=x_t.device)
        cond = x0_pred if self_condition else torch.zeros_like(x_t)
        x0_pred = denoise(x_t, cond, t).float().clamp(-scale, scale)
        x_t = ddim_step(x_t, x0_pred, schedule(t), schedule(torch.full_like(t, t_next)))
    return x0_pred


# --- training helpers ----------------------------------------------------------------------------


def randomize_instance_ids(
    instance_map: torch.Tensor, max_instance_id: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Give the instances of each image fresh, distinct, random ids in ``[1, max_instance_id]``.

    Pix2Seq-D assigns instance ids in random order at every step, so the model learns ids as
    grouping labels, not identities. Id 0 (no instance) stays 0.

    Args:
        instance_map: (B, H, W) long, 0 = no instance.
        max_instance_id: largest allowed id (``2**instance_bits - 1``).
        generator: RNG (CPU generator; ids are drawn on CPU then moved).

    Returns:
        (B, H, W) long with the same partition of pixels into instances.

    Raises:
        ValueError: when an image has more instances than ``max_instance_id``.
    """
    out = torch.zeros_like(instance_map)
    for b in range(instance_map.shape[0]):
        ids, inverse = torch.unique(instance_map[b], return_inverse=True)
        has_zero = bool((ids == 0).any())
        count = len(ids) - int(has_zero)
        if count > max_instance_id:
            raise ValueError(
                f"image {b} has {count} instances but the id bits hold at most {max_instance_id}"
            )
        fresh = torch.randperm(max_instance_id, generator=generator)[:count] + 1
        table = torch.zeros(len(ids), dtype=torch.long)
        table[ids.cpu() != 0] = fresh
        out[b] = table.to(instance_map.device)[inverse]
    return out


def area_loss_weights(class_map: torch.Tensor, instance_map: torch.Tensor, power: float) -> torch.Tensor:
    """Per-pixel loss weights that up-weight small segments (Pix2Seq-D's mask loss re-weighting).

    A pixel of a segment (a distinct (class, instance) pair, void included) with ``n`` pixels gets
    weight ``n ** -power``; weights are then rescaled so each image's weights average to 1, so the
    loss scale does not depend on the weighting. ``power = 0`` gives uniform weights, ``power = 1``
    gives every segment the same total weight.

    Args:
        class_map, instance_map: (B, H, W) long.
        power: exponent ``p >= 0``.

    Returns:
        (B, H, W) float weights, mean 1 per image.
    """
    if power < 0:
        raise ValueError(f"loss re-weighting power must be >= 0, got {power}")
    if power == 0:
        return torch.ones(class_map.shape, device=class_map.device)
    weights = torch.empty(class_map.shape, device=class_map.device)
    key = class_map.long() * (int(instance_map.max()) + 1) + instance_map.long()
    for b in range(key.shape[0]):
        _, inverse, counts = torch.unique(key[b], return_inverse=True, return_counts=True)
        w = counts.float().pow(-power)[inverse]
        weights[b] = w / w.mean()
    return weights


__all__ = [
    "NOISE_SCHEDULES",
    "DenoiseFn",
    "PanopticBitCodec",
    "analog_to_bits",
    "area_loss_weights",
    "bits_to_analog",
    "bits_to_int",
    "cosine_gamma",
    "ddim_sample",
    "ddim_step",
    "ddim_times",
    "get_schedule",
    "int_to_bits",
    "predict_noise",
    "q_sample",
    "randomize_instance_ids",
]

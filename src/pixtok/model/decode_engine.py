"""The fast decode path for pixtok's T5 decoder.

Pix2Seq-style detection writes 5 tokens per object, so 100 objects cost 500 sequential decoder
steps, each of which reads every decoder weight once. Stock ``generate`` spends most of that time
launching kernels and growing caches rather than reading weights. This engine removes the overhead:

* a **static KV cache** preallocated per layer, written in place at a device-side position counter;
* **cross-attention K/V computed once per image** (:meth:`StaticT5Decoder.prefill`);
* a compact re-implementation of one T5 decoder step over the stock module's weights (T5 RMS norm
  without mean subtraction, unscaled attention, the first layer's relative position bias shared by
  all layers, relu or gated-gelu FFN, ``d_model ** -0.5`` rescale before a tied LM head), with the
  self-attention q/k/v and the gated FFN input projections fused into one matrix each;
* **LoRA merged** on the fly: peft LoRA layers contribute ``base + delta`` weights to the engine's
  own copies, and the model passed in is left untouched;
* **grammar-restricted logits** for detection: a coordinate step multiplies the hidden state by only
  the ``num_bins`` coordinate rows of the LM head (+ the EOS row between objects), a class step by
  only the class rows, instead of the whole vocabulary;
* **CUDA graphs**: one object (5 steps, each with its own fixed head rows) is captured as one graph,
  greedy argmax or nucleus sampling included, and replayed; whether every sequence has ended is
  read back once every ``check_every`` objects only.

On a CPU the same code runs eagerly, which is how the tests prove equality with stock transformers.
On CUDA (batch <= 4, the default ``kernels="auto"``), Triton kernels replace the per-layer torch ops:
RMS norm + matrix-vector product + activation/gate/residual in one kernel, a one-query attention that
also writes the cache, 8 launches per layer instead of ~14; greedy detection adds two per step (the
grammar head with the final norm folded in; the pick with every output and state update). On Hopper
they launch with programmatic dependent launch: each kernel reads its first weight tile while the
previous one finishes. Tested in Triton's CPU interpreter and, in fp32, on the GPU
(``benchmarks/decode.py``, ``benchmarks/decode_kernels.py``).

Two entry points:

* :meth:`StaticT5Decoder.step_fn` returns a ``step_fn(input_ids (B, 1)) -> (logits (B, V), hidden
  (B, D))`` callable for ``decoding.decode`` (full-vocabulary logits, the cache kept inside);
* :func:`fast_generate_detection` (or :meth:`StaticT5Decoder.generate_detection`) is the fused
  detection path returning :class:`FastDecodeOutput`.

Only closed-vocabulary detection (``<cls_c>`` tokens) has a fused path; open-vocabulary detection
and the text tasks go through ``step_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vocab import DECODER_START_ID, EOS_ID, PAD_ID, PixtokVocab

try:  # Triton ships with CUDA builds of torch; the fused kernels below are optional (CUDA only)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

TOKENS_PER_OBJECT = 5
"""A Pix2Seq object is ``[ymin, xmin, ymax, xmax, class]``; the fused path captures one object."""

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # same function as transformers' NewGELU
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class FastDecodeOutput:
    """What the fused detection path returns (the same fields as ``decoding.DecodeResult``).

    Attributes:
        sequences: (B, T) long, generated ids without the start token; 0 (pad) after EOS.
        token_scores: (B, T) float32, probability of each chosen token under the grammar-masked
            softmax (0 after EOS).
        hidden_states: (B, T, D) the decoder's last hidden state (after the final layer norm, before
            the LM-head rescale) of the step that chose each token (after EOS: the padding steps').
        lengths: (B,) long, number of tokens up to and including EOS (T_max when none was written).
    """

    sequences: Tensor
    token_scores: Tensor
    hidden_states: Tensor
    lengths: Tensor


@dataclass(frozen=True)
class DetectionRows:
    """Which LM-head rows the detection grammar allows at each position inside an object.

    Attributes:
        coord_ids: (num_bins,) long, coordinate token ids (positions 0–3).
        class_ids: (C',) long, class token ids allowed at position 4 (closed-set classes, plus
            ``<noise>`` when allowed).
        score_only_ids: (0,) or (1,) long, ids after ``class_ids`` at position 4 that are never
            chosen but take part in the class score's softmax (``<noise>``: Pix2Seq ranks an object
            by its class's probability against noise; ``decoding.GenerationOptions.rank_against_noise``).
    """

    coord_ids: Tensor
    class_ids: Tensor
    score_only_ids: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @classmethod
    def from_vocab(
        cls, vocab: PixtokVocab, allow_noise_class: bool = False, rank_against_noise: bool = True
    ) -> DetectionRows:
        """Rows of the detection grammar for ``vocab`` (closed-set classes only).

        ``allow_noise_class`` lets ``<noise>`` be chosen; otherwise ``rank_against_noise`` keeps it in
        the class score's softmax only (the plain path's ``grammar_for("detection")`` does the same).

        Raises:
            ValueError: for an open-vocabulary vocabulary or one without any class to write.
        """
        if vocab.open_vocabulary:
            raise ValueError(
                "the fused detection path needs closed-set <cls_c> tokens; open-vocabulary detection "
                "writes class names as text: decode it through StaticT5Decoder.step_fn instead"
            )
        class_ids = list(range(vocab.class_offset, vocab.class_offset + vocab.num_classes))
        if not class_ids:
            raise ValueError("the vocabulary has no class tokens (class_names is empty)")
        score_only = []
        if allow_noise_class:
            class_ids.append(vocab.noise_id)
        elif rank_against_noise:
            score_only.append(vocab.noise_id)
        coord_ids = torch.arange(vocab.coord_offset, vocab.coord_offset + vocab.num_bins)
        return cls(
            coord_ids=coord_ids,
            class_ids=torch.tensor(class_ids, dtype=torch.long),
            score_only_ids=torch.tensor(score_only, dtype=torch.long),
        )

    def allowed(self, position_in_object: int) -> Tensor:
        """Vocabulary ids in the softmax at ``position_in_object`` (EOS first at position 0; the
        score-only ids last at the class position)."""
        if position_in_object == 0:
            return torch.cat([torch.tensor([EOS_ID]), self.coord_ids])
        if position_in_object < TOKENS_PER_OBJECT - 1:
            return self.coord_ids
        return torch.cat([self.class_ids, self.score_only_ids])

    def choosable(self, position_in_object: int) -> int:
        """How many of :meth:`allowed`'s leading ids may be chosen at ``position_in_object``."""
        extra = len(self.score_only_ids) if position_in_object == TOKENS_PER_OBJECT - 1 else 0
        return len(self.allowed(position_in_object)) - extra


# --- fused Triton kernels (kernels="triton", CUDA) ----------------------------------------------
# At batch 1 a decoder step is ~190 (base) to ~380 (XL) tiny kernels, and each costs a few
# microseconds however little it reads. These two kernels cut a layer from ~14 kernels to 8:
# a matrix-vector product with the T5 RMS norm as prologue (the norm weight folded into the matrix)
# and the activation / gate / residual as epilogue, and a one-query attention that also writes the
# new key/value into the static cache and reads only the positions written so far.

_TRITON_ACTIVATIONS = {"relu": 1, "gelu_new": 2, "gelu_pytorch_tanh": 2, "silu": 3, "swish": 3}
_TRITON_MAX_BATCH = 4  # grid over the batch: each row re-reads the weights, fine for small batches

ATTENTION_CONFIGS: dict[str, tuple[int, int]] = {"self": (256, 8), "cross": (64, 4)}
"""(BLOCK_T, num_warps) of the one-query attention kernel for self- and cross-attention: the
fastest of a sweep on an H100 (``benchmarks/decode_kernels.py``) at 250 and 500 cached keys / 64
encoder positions, for 12 and 32 heads."""

GEMV_CONFIGS: dict[tuple[int, int, bool], tuple[int, int, int]] = {}
"""Per-shape launch overrides ``(n_out, k_in, gated) -> (BLOCK_N, BLOCK_K, num_warps)`` for the
fused matrix-vector kernel; shapes not listed use :func:`_gemv_config`'s rule."""


def _gemv_config(n_out: int, k_in: int, gated: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for one matrix-vector product shape."""
    override = GEMV_CONFIGS.get((n_out, k_in, gated))
    if override is not None:
        return override
    # Few rows per program and a long row slice each: on an H100 (benchmarks/decode_kernels.py)
    # this rule is within 10 % of the best of 38 shapes for every T5-base / XL product and the
    # grammar head, and up to 2.4x faster than (4, 256, 4).
    block_k = min(2048, triton.next_power_of_2(k_in))
    return (1 if gated or n_out >= 4096 else 2), block_k, 4


def pdl_supported(device: torch.device | str) -> bool:
    """Whether the Triton kernels can overlap with the previous kernel (programmatic dependent launch).

    Needs a Hopper-or-newer GPU and a Triton with the ``gdc_wait`` / ``gdc_launch_dependents``
    intrinsics and the ``launch_pdl`` launch option.
    """
    device = torch.device(device)
    if gdc_wait is None or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _triton_unsupported(device: torch.device, max_batch_size: int, activation: str) -> str | None:
    """Why ``kernels="triton"`` cannot run this engine (``None`` when it can)."""
    if triton is None or device.type != "cuda":
        return "kernels='triton' needs a CUDA device and the triton package"
    if max_batch_size > _TRITON_MAX_BATCH:
        return f"kernels='triton' decodes at most {_TRITON_MAX_BATCH} sequences at once"
    if activation not in _TRITON_ACTIVATIONS:
        return f"kernels='triton' has no {activation!r} activation"
    return None


gdc_launch_dependents = gdc_wait = None  # the PDL intrinsics, where this Triton has them
if triton is not None:
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
    except ImportError:  # pragma: no cover - old Triton: PDL stays off (pdl_supported says so)
        gdc_launch_dependents = gdc_wait = None

    @triton.jit
    def _activate(x, ACT: tl.constexpr):
        if ACT == 1:
            x = tl.maximum(x, 0.0)
        elif ACT == 2:  # tanh-approximated GELU, tanh(z) = 1 - 2 / (exp(2 z) + 1)
            z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            x = 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * z) + 1.0))
        elif ACT == 3:
            x = x / (1.0 + tl.exp(-x))
        return x

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, res_ptr, out_ptr, n_out, k_in, eps,
        NORM: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """out[b, n] = epilogue(sum_k W[n, k] * prologue(x[b, :])[k]); W (n_out [x2 gated], k_in).

        The first weight tile is read before anything that an earlier kernel writes: with PDL
        (programmatic dependent launch) it streams in while the previous kernel is still running.
        """
        pid = tl.program_id(0)
        b = tl.program_id(1)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_out
        cols = tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (cols < k_in)[None, :]
        tile = rows[:, None] * k_in + cols[None, :]
        w = tl.load(w_ptr + tile, mask=ok, other=0.0)
        w_gate = w
        if GATED:  # rows [n_out, 2 n_out) hold the linear half: act(W0 x) * (W1 x)
            w_gate = tl.load(w_ptr + n_out * k_in + tile, mask=ok, other=0.0)
        if PDL:
            gdc_launch_dependents()
            gdc_wait()  # from here on, everything the previous kernel wrote is visible
        x_row = x_ptr + b * k_in
        scale = 1.0
        if NORM:
            sq = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, k_in, BLOCK_K):
                xv = tl.load(x_row + k0 + cols, mask=k0 + cols < k_in, other=0.0).to(tl.float32)
                sq += xv * xv
            scale = 1.0 / tl.sqrt(tl.sum(sq, axis=0) / k_in + eps)
        xv = tl.load(x_row + cols, mask=cols < k_in, other=0.0).to(tl.float32) * scale
        acc = tl.sum(w.to(tl.float32) * xv[None, :], axis=1)
        acc_gate = tl.sum(w_gate.to(tl.float32) * xv[None, :], axis=1)
        for k0 in range(BLOCK_K, k_in, BLOCK_K):
            col_ok = k0 + cols < k_in
            xv = tl.load(x_row + k0 + cols, mask=col_ok, other=0.0).to(tl.float32) * scale
            ok_k = row_ok[:, None] & col_ok[None, :]
            w_k = tl.load(w_ptr + k0 + tile, mask=ok_k, other=0.0).to(tl.float32)
            acc += tl.sum(w_k * xv[None, :], axis=1)
            if GATED:
                w1 = tl.load(w_ptr + n_out * k_in + k0 + tile, mask=ok_k, other=0.0).to(tl.float32)
                acc_gate += tl.sum(w1 * xv[None, :], axis=1)
        if ACT != 0:
            acc = _activate(acc, ACT)
        if GATED:
            acc = acc * acc_gate
        if RESIDUAL:
            acc += tl.load(res_ptr + b * n_out + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + b * n_out + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)

    @triton.jit
    def _decode_attention_kernel(
        q_ptr, q_stride_b, new_ptr, k_ptr, v_ptr, cache_stride_b, cache_stride_h,
        bias_ptr, bias_stride_b, bias_stride_h, bias_stride_q, pos_ptr, out_ptr, n_keys, heads,
        SELF: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """One query per (batch, head), unscaled T5 scores + additive bias, online softmax.

        Self-attention (SELF): the new key/value (at ``new_ptr``: k then v, each ``heads * d``)
        are written at cache position ``pos`` and attended together with positions [0, pos).
        Cross-attention: all ``n_keys`` cached positions, ``bias`` is the encoder mask.
        The first block of cached keys/values (written by earlier steps or the prefill) is read
        before waiting on the previous kernel (PDL); ``pos`` is written by a non-PDL launch.
        """
        b = tl.program_id(0) // heads
        h = tl.program_id(0) % heads
        d = tl.arange(0, HEAD_DIM)
        pos = tl.load(pos_ptr)
        if SELF:
            n_keys = pos
        k_base = k_ptr + b * cache_stride_b + h * cache_stride_h
        v_base = v_ptr + b * cache_stride_b + h * cache_stride_h
        bias_row = bias_ptr + b * bias_stride_b + h * bias_stride_h + pos * bias_stride_q
        t = tl.arange(0, BLOCK_T)
        t_ok = t < n_keys
        kv = t[:, None] * HEAD_DIM + d[None, :]
        k = tl.load(k_base + kv, mask=t_ok[:, None], other=0.0)
        v = tl.load(v_base + kv, mask=t_ok[:, None], other=0.0)
        bias = tl.load(bias_row + t, mask=t_ok, other=0.0)
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        q = tl.load(q_ptr + b * q_stride_b + h * HEAD_DIM + d).to(tl.float32)
        m = tl.max(tl.full([BLOCK_T], float("-inf"), tl.float32), axis=0)
        denom = tl.sum(tl.zeros([BLOCK_T], tl.float32), axis=0)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        for t0 in range(0, n_keys, BLOCK_T):
            if t0 > 0:  # the first block was read above
                t_ok = t0 + t < n_keys
                k = tl.load(k_base + t0 * HEAD_DIM + kv, mask=t_ok[:, None], other=0.0)
                v = tl.load(v_base + t0 * HEAD_DIM + kv, mask=t_ok[:, None], other=0.0)
                bias = tl.load(bias_row + t0 + t, mask=t_ok, other=0.0)
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1) + bias.to(tl.float32)
            s = tl.where(t_ok, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            p = tl.exp(s - m_new)
            alpha = tl.exp(m - m_new)
            denom = denom * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            m = m_new
        if SELF:
            k_new = tl.load(new_ptr + b * q_stride_b + h * HEAD_DIM + d)
            v_new = tl.load(new_ptr + b * q_stride_b + heads * HEAD_DIM + h * HEAD_DIM + d)
            tl.store(k_base + pos * HEAD_DIM + d, k_new)
            tl.store(v_base + pos * HEAD_DIM + d, v_new)
            s_new = tl.sum(k_new.to(tl.float32) * q, axis=0) + tl.load(bias_row + pos).to(tl.float32)
            m_new = tl.maximum(m, s_new)
            alpha = tl.exp(m - m_new)
            p_new = tl.exp(s_new - m_new)
            denom = denom * alpha + p_new
            acc = acc * alpha + p_new * v_new.to(tl.float32)
        out = acc / denom
        tl.store(out_ptr + b * heads * HEAD_DIM + h * HEAD_DIM + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def _pick_kernel(
        logits_ptr, n_rows, n_choose, ids_ptr, temperature_ptr, eos_bias_ptr, coord_bias_ptr, pos_ptr,
        done_ptr, input_ids_ptr, out_ids_ptr, out_scores_ptr, out_hidden_ptr, x_ptr, final_ln_ptr,
        eps, embedding_ptr, positions_ptr, x_next_ptr, bsz, max_length, d_model,
        BOUNDARY: tl.constexpr, HAS_POSITIONS: tl.constexpr, PAD: tl.constexpr, EOS: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """The greedy tail of one detection step, for every sequence, in one program.

        Per sequence: grammar-row logits / temperature (+ the object-boundary biases at position 0 of
        an object), argmax over the first ``n_choose`` rows (the rest are score-only), its
        probability in the softmax over all ``n_rows``, the chosen vocabulary id (pad after EOS), the
        outputs at ``pos`` (id, score, final-norm hidden state), ``done``, the next input id and the
        next step's input embedding (token row + position row); then ``pos += 1``.
        """
        pos = tl.load(pos_ptr)
        r = tl.arange(0, BLOCK_R)
        r_ok = r < n_rows
        dcol = tl.arange(0, BLOCK_D)
        d_ok = dcol < d_model
        temperature = tl.load(temperature_ptr)
        for b in range(0, bsz):
            logits = tl.load(logits_ptr + b * n_rows + r, mask=r_ok, other=float("-inf")) / temperature
            if BOUNDARY:  # row 0 is EOS, the others are coordinates
                bias = tl.where(r == 0, tl.load(eos_bias_ptr + pos), tl.load(coord_bias_ptr + pos))
                logits = tl.where(r_ok, logits + bias, float("-inf"))
            best = tl.max(logits, axis=0)
            pickable = tl.where(r < n_choose, logits, float("-inf"))
            choice = tl.argmax(pickable, axis=0)
            score = tl.exp(tl.max(pickable, axis=0) - best) / tl.sum(tl.exp(logits - best), axis=0)
            done = tl.load(done_ptr + b) != 0
            token = tl.load(ids_ptr + choice)
            token = tl.where(done, PAD, token)
            tl.store(out_ids_ptr + b * max_length + pos, token)
            tl.store(out_scores_ptr + b * max_length + pos, tl.where(done, 0.0, score))
            x = tl.load(x_ptr + b * d_model + dcol, mask=d_ok, other=0.0).to(tl.float32)
            inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d_model + eps)
            hidden = x * inv * tl.load(final_ln_ptr + dcol, mask=d_ok, other=0.0).to(tl.float32)
            hidden_row = out_hidden_ptr + (b * max_length + pos) * d_model
            tl.store(hidden_row + dcol, hidden.to(out_hidden_ptr.dtype.element_ty), mask=d_ok)
            tl.store(done_ptr + b, (done | (token == EOS)).to(tl.int1))
            tl.store(input_ids_ptr + b, token)
            nxt = tl.load(embedding_ptr + token * d_model + dcol, mask=d_ok, other=0.0).to(tl.float32)
            if HAS_POSITIONS:  # the table has max_length rows; the last step's successor is never run
                row_ok = dcol < tl.where(pos + 1 < max_length, d_model, 0)
                nxt += tl.load(positions_ptr + (pos + 1) * d_model + dcol, mask=row_ok, other=0.0).to(
                    tl.float32
                )
            tl.store(x_next_ptr + b * d_model + dcol, nxt.to(x_next_ptr.dtype.element_ty), mask=d_ok)
        tl.store(pos_ptr, pos + 1)


def _triton_gemv(
    x: Tensor,
    weight: Tensor,
    norm_eps: float | None = None,
    act: int = 0,
    gated: bool = False,
    residual: Tensor | None = None,
    pdl: bool = False,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """x (B, K) contiguous, weight (N or 2N, K) -> (B, N); see ``_gemv_kernel``."""
    bsz, k_in = x.shape
    n_out = weight.shape[0] // 2 if gated else weight.shape[0]
    out = torch.empty(bsz, n_out, device=x.device, dtype=out_dtype or x.dtype)
    block_n, block_k, warps = _gemv_config(n_out, k_in, gated)
    grid = (triton.cdiv(n_out, block_n), bsz)
    _gemv_kernel[grid](
        x, weight, residual if residual is not None else x, out, n_out, k_in, norm_eps or 0.0,
        NORM=norm_eps is not None, ACT=act, GATED=gated, RESIDUAL=residual is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl, num_warps=warps, launch_pdl=pdl,
    )  # fmt: skip
    return out


def merged_linear_weight(linear: nn.Module) -> Tensor:
    """Weight ``(out, in)`` of a linear layer with any active peft LoRA delta merged in.

    Plain ``nn.Linear`` gives its weight; a peft LoRA layer (duck-typed: ``base_layer``,
    ``get_delta_weight``) gives ``W + sum(delta)`` over its active adapters unless peft already merged
    them. The module is not modified.

    Raises:
        NotImplementedError: for DoRA adapters or layers without a dense ``weight``.
    """
    if not hasattr(linear, "base_layer"):
        weight = getattr(linear, "weight", None)
        if not isinstance(weight, Tensor):
            raise NotImplementedError(f"{type(linear).__name__} has no dense weight to read")
        return weight.detach()
    weight = linear.get_base_layer().weight.detach()
    if getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return weight
    for name in linear.active_adapters:
        if name not in getattr(linear, "lora_A", {}):
            continue
        if getattr(linear, "use_dora", {}).get(name, False):
            raise NotImplementedError("DoRA adapters are not supported: merge them with peft first")
        weight = weight + linear.get_delta_weight(name).to(weight.dtype)
    return weight


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """T5 layer norm: scale only, no mean subtraction, statistics in float32. x: (B, D).

    One fused kernel where torch has ``F.rms_norm`` (it accumulates in float32); the weight is applied
    before the cast back, which differs from T5's cast-then-scale only by bf16 rounding.
    """
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


@dataclass
class _LayerWeights:
    ln_self: Tensor  # (D,)
    qkv: Tensor  # (3 * inner, D)
    o: Tensor  # (D, inner)
    ln_cross: Tensor
    q_cross: Tensor  # (inner, D)
    k_cross: Tensor  # (inner, D) — used once per image by prefill
    v_cross: Tensor
    o_cross: Tensor  # (D, inner)
    ln_ff: Tensor
    wi: Tensor  # (d_ff, D) or gated (2 * d_ff, D) = [wi_0; wi_1]
    wo: Tensor  # (D, d_ff)


class StaticT5Decoder:
    """A T5 decoder with a static KV cache, cross-attention K/V cached per image and CUDA graphs.

    The engine copies (and, for LoRA layers, merges) the decoder weights of ``t5`` in ``dtype``; the
    model itself is not modified and may be freed afterwards if only decoding is needed.

    Args:
        t5: a ``transformers.T5ForConditionalGeneration`` (any T5 / T5 v1.1 / Flan-T5 config), or a
            peft model wrapping one.
        max_batch_size: most sequences decoded at once.
        max_length: most decoder steps per sequence (the self-attention cache length; rounded up).
        max_encoder_length: most encoder positions (the cross-attention cache length).
        dtype: compute dtype (bf16 on GPU; fp32 for exactness tests).
        device: where the engine runs; CUDA graphs are used only on CUDA devices.
        use_cuda_graph: capture the decode step; defaults to ``device.type == "cuda"``.
        attention: ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"bmm"`` (explicit
            matmul/softmax/matmul; fewer surprises for one query row).
        compile_layers: run the per-step layer stack through ``torch.compile`` (fuses the norms and
            element-wise work into fewer kernels; the first call compiles).
        kernels: ``"auto"`` (``"triton"`` where it applies: CUDA, the triton package, batch <= 4, a
            supported activation; else ``"torch"``), ``"torch"`` (stock ops) or ``"triton"`` (CUDA,
            batch <= 4: fused norm+matrix-vector
            and one-query attention kernels, 8 per layer; the norm weights are folded into the
            following matrices, so results differ from ``"torch"`` by rounding only). Greedy
            detection then also runs its head, pick and bookkeeping as two kernels per step.
        pdl: with ``kernels="triton"``, launch the kernels with programmatic dependent launch, so
            each one starts reading its weights while the previous one finishes (Hopper or newer);
            ``None`` = wherever :func:`pdl_supported` says it works.
        position_embeddings: optional (P, D) absolute position table added to the input embedding
            at each step (pixtok's ``decoder_position_embeddings``); decoding stops at P steps.
        input_scale: multiplier of the input embedding (token row plus position row), pixtok's
            ``text_input_scale``; folded into the engine's copies of the two tables.
    """

    def __init__(
        self,
        t5: nn.Module,
        max_batch_size: int,
        max_length: int,
        max_encoder_length: int = 512,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        use_cuda_graph: bool | None = None,
        attention: str = "sdpa",
        compile_layers: bool = False,
        kernels: str = "auto",
        position_embeddings: Tensor | None = None,
        pdl: bool | None = None,
        input_scale: float = 1.0,
    ) -> None:
        if hasattr(t5, "get_base_model"):  # a peft PeftModel: read the injected layers underneath
            t5 = t5.get_base_model()
        if not (hasattr(t5, "decoder") and hasattr(t5, "lm_head") and hasattr(t5.decoder, "block")):
            raise TypeError(f"expected a T5ForConditionalGeneration, got {type(t5).__name__}")
        if max_batch_size < 1 or max_length < 1 or max_encoder_length < 1:
            raise ValueError("max_batch_size, max_length and max_encoder_length must be positive")
        if position_embeddings is not None and max_length > position_embeddings.shape[0] + 1:
            # the last step's token is never fed back: max_length steps read max_length - 1 rows
            raise ValueError(
                f"max_length {max_length} needs {max_length - 1} decoder positions; the position table "
                f"has {position_embeddings.shape[0]}"
            )
        if attention not in ("sdpa", "bmm"):
            raise ValueError(f"attention must be 'sdpa' or 'bmm', got {attention!r}")
        config = t5.config
        self.device = torch.device(device) if device is not None else t5.lm_head.weight.device
        self.dtype = dtype
        self.use_cuda_graph = self.device.type == "cuda" if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.attention = attention
        if kernels not in ("auto", "torch", "triton"):
            raise ValueError(f"kernels must be 'auto', 'torch' or 'triton', got {kernels!r}")
        unsupported = _triton_unsupported(self.device, max_batch_size, config.dense_act_fn)
        if kernels == "auto":
            kernels = "torch" if unsupported or compile_layers else "triton"
        self.kernels = kernels
        if kernels == "triton":
            if unsupported:
                raise ValueError(unsupported)
            self._triton_act = _TRITON_ACTIVATIONS[config.dense_act_fn]
        if pdl and not (kernels == "triton" and pdl_supported(self.device)):
            raise ValueError(
                "pdl=True needs kernels='triton' on a Hopper-or-newer GPU with a PDL-capable Triton"
            )
        self.pdl = bool(pdl) if pdl is not None else kernels == "triton" and pdl_supported(self.device)
        self._layers_fn: Callable[[Tensor], Tensor] = (
            self._decoder_hidden_triton if kernels == "triton" else self._decoder_hidden
        )
        if compile_layers:
            self._layers_fn = torch.compile(self._layers_fn, fullgraph=True, dynamic=False)
        self.num_heads = config.num_heads
        self.head_dim = config.d_kv
        self.inner_dim = config.num_heads * config.d_kv
        self.d_model = config.d_model
        self.d_ff = config.d_ff
        self.eps = config.layer_norm_epsilon
        self.gated = bool(config.is_gated_act)
        act_name = config.dense_act_fn
        if act_name not in _ACTIVATIONS:
            raise ValueError(f"unsupported T5 activation {act_name!r}; known: {sorted(_ACTIVATIONS)}")
        self._act = _ACTIVATIONS[act_name]
        self.vocab_size = t5.lm_head.weight.shape[0]
        scale = getattr(config, "scale_decoder_outputs", None)
        if scale is None:
            scale = getattr(config, "tie_word_embeddings", True)
        self.head_scale = self.d_model**-0.5 if scale else 1.0
        self.max_batch_size = max_batch_size
        # 80 = lcm(5 tokens per object, 16): whole objects and 16-aligned attention-mask rows.
        self.max_length = -(-max_length // 80) * 80
        self.max_encoder_length = -(-max_encoder_length // 16) * 16

        with torch.no_grad():
            self._load_weights(t5)
            self._alloc_buffers(t5)
            # rows past the table are zero: only the cache's rounding slack reaches them
            self.positions = None
            if position_embeddings is not None:
                self.positions = torch.zeros(self.max_length, self.d_model, device=self.device, dtype=dtype)
                rows = min(self.max_length, position_embeddings.shape[0])
                self.positions[:rows] = self._w(position_embeddings[:rows])
            self.input_scale = float(input_scale)
            if self.input_scale != 1.0:  # new tensors: the engine's copies may share the T5's storage
                self.embedding = self.embedding * self.input_scale
                if self.positions is not None:
                    self.positions = self.positions * self.input_scale
        self._batch = 0
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._row_cache: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor] | None]] = {}
        self._active_rows: tuple[list[Tensor], list[Tensor], list[Tensor] | None, list[int]] = (
            [],
            [],
            None,
            [],
        )
        # greedy triton detection: head + pick as two kernels per step (benchmarks turn it off)
        self._fused_tail = True

    # --- set-up ----------------------------------------------------------------------------------
    def _w(self, t: Tensor) -> Tensor:
        return t.detach().to(device=self.device, dtype=self.dtype).contiguous()

    def _load_weights(self, t5: nn.Module) -> None:
        self.layers: list[_LayerWeights] = []
        for block in t5.decoder.block:
            attn, cross, ff = block.layer[0], block.layer[1], block.layer[-1]
            sa, ca, dense = attn.SelfAttention, cross.EncDecAttention, ff.DenseReluDense
            qkv = torch.cat([merged_linear_weight(m) for m in (sa.q, sa.k, sa.v)], dim=0)
            if self.gated:
                wi = torch.cat([merged_linear_weight(dense.wi_0), merged_linear_weight(dense.wi_1)], dim=0)
            else:
                wi = merged_linear_weight(dense.wi)
            q_cross = merged_linear_weight(ca.q)
            if self.kernels == "triton":  # fold each RMS-norm weight into the matrix that follows it
                qkv = qkv.float() * attn.layer_norm.weight.detach().float()
                q_cross = q_cross.float() * cross.layer_norm.weight.detach().float()
                wi = wi.float() * ff.layer_norm.weight.detach().float()
            self.layers.append(
                _LayerWeights(
                    ln_self=self._w(attn.layer_norm.weight),
                    qkv=self._w(qkv),
                    o=self._w(merged_linear_weight(sa.o)),
                    ln_cross=self._w(cross.layer_norm.weight),
                    q_cross=self._w(q_cross),
                    k_cross=self._w(merged_linear_weight(ca.k)),
                    v_cross=self._w(merged_linear_weight(ca.v)),
                    o_cross=self._w(merged_linear_weight(ca.o)),
                    ln_ff=self._w(ff.layer_norm.weight),
                    wi=self._w(wi),
                    wo=self._w(merged_linear_weight(dense.wo)),
                )
            )
        self.final_ln = self._w(t5.decoder.final_layer_norm.weight)
        self.embedding = self._w(t5.decoder.embed_tokens.weight)
        self.lm_head = self._w(merged_linear_weight(t5.lm_head))
        # Relative position bias of the causal decoder, from the first layer, for every
        # (query position, key position) pair, with the causal mask folded in: (T, H, T).
        sa0 = t5.decoder.block[0].layer[0].SelfAttention
        length = self.max_length
        bias = sa0.compute_bias(length, length, device=sa0.relative_attention_bias.weight.device)
        bias = bias[0].permute(1, 0, 2).float().to(self.device)  # (T_query, H, T_key)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        bias = bias.masked_fill(~causal[:, None, :], torch.finfo(self.dtype).min)
        self.self_bias = bias.to(self.dtype).contiguous()

    def _alloc_buffers(self, t5: nn.Module) -> None:
        b, h, d, t = self.max_batch_size, self.num_heads, self.head_dim, self.max_length
        le, dev, dt = self.max_encoder_length, self.device, self.dtype
        n = len(self.layers)
        self.kv_cache = torch.zeros(n, 2, b, h, t, d, device=dev, dtype=dt)
        self.cross_kv = torch.zeros(n, 2, b, h, le, d, device=dev, dtype=dt)
        self.cross_mask = torch.zeros(b, 1, 1, le, device=dev, dtype=dt)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.input_ids = torch.full((b,), DECODER_START_ID, dtype=torch.long, device=dev)
        self.done = torch.zeros(b, dtype=torch.bool, device=dev)
        # Fused-path outputs, written in place at `position`.
        self.out_ids = torch.zeros(b, t, dtype=torch.long, device=dev)
        self.out_scores = torch.zeros(b, t, dtype=torch.float32, device=dev)
        self.out_hidden = torch.zeros(b, t, self.d_model, device=dev, dtype=dt)
        # Per-call decoding options as tensors, so one captured graph serves every setting.
        # Object-boundary logit biases per step (used at position 0 of an object): EOS gets
        # eos_logit_offset or -inf (before min_objects); coordinates get 0 or -inf (no room left to
        # finish another object, or max_objects reached).
        self.eos_bias = torch.zeros(t, dtype=torch.float32, device=dev)
        self.coord_bias = torch.zeros(t, dtype=torch.float32, device=dev)
        self.temperature = torch.ones(1, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(1, dtype=torch.float32, device=dev)
        # step_fn outputs
        self.step_logits = torch.zeros(b, self.vocab_size, dtype=torch.float32, device=dev)
        self.step_hidden = torch.zeros(b, self.d_model, device=dev, dtype=dt)
        # the fused greedy path: the next step's input embedding, written by the pick kernel
        self.x_next = torch.zeros(b, self.d_model, device=dev, dtype=dt)

    # --- per image -------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor | None = None) -> None:
        """Compute every layer's cross-attention K/V once and reset the decoder state.

        Args:
            encoder_hidden_states: (B, L, D) the T5 encoder's output.
            encoder_attention_mask: (B, L) 1 = attend, 0 = padding; all ones when ``None``.

        Raises:
            ValueError: on a batch, length or width the engine was not built for, or a mask row
                without any position to attend to.
        """
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"encoder_hidden_states must be (B, L, {self.d_model}), got {tuple(encoder_hidden_states.shape)}"
            )
        bsz, length, _ = encoder_hidden_states.shape
        if bsz > self.max_batch_size or length > self.max_encoder_length:
            raise ValueError(
                f"batch {bsz} x encoder length {length} exceeds the engine's "
                f"{self.max_batch_size} x {self.max_encoder_length}"
            )
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(bsz, length, dtype=torch.long)
        if tuple(encoder_attention_mask.shape) != (bsz, length):
            raise ValueError(
                f"encoder_attention_mask must be ({bsz}, {length}), got {tuple(encoder_attention_mask.shape)}"
            )
        valid = encoder_attention_mask.to(self.device).bool()
        if not bool(valid.any(-1).all()):
            raise ValueError("every encoder_attention_mask row needs at least one position set to 1")
        enc = encoder_hidden_states.to(self.device, self.dtype)
        h, d = self.num_heads, self.head_dim
        self.cross_kv.zero_()
        for i, layer in enumerate(self.layers):
            k = F.linear(enc, layer.k_cross).view(bsz, length, h, d).transpose(1, 2)
            v = F.linear(enc, layer.v_cross).view(bsz, length, h, d).transpose(1, 2)
            self.cross_kv[i, 0, :bsz, :, :length] = k
            self.cross_kv[i, 1, :bsz, :, :length] = v
        self.cross_mask.fill_(torch.finfo(self.dtype).min)
        self.cross_mask[:bsz, 0, 0, :length].masked_fill_(valid, 0.0)
        self._batch = bsz
        self.reset()

    def reset(self) -> None:
        """Start a new sequence (position 0, start token) without touching the cross-attention cache."""
        self.position.zero_()
        self.input_ids.fill_(DECODER_START_ID)
        self.done.zero_()
        self.out_ids.zero_()
        self.out_scores.zero_()
        self.out_hidden.zero_()
        self.x_next.copy_(self._embed(self.input_ids))

    # --- one decoder step ------------------------------------------------------------------------
    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        """q (B, H, 1, d), k/v (B, H, S, d), additive bias broadcastable to (B, H, 1, S) -> (B, H*d)."""
        bsz = q.shape[0]
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) + bias
            out = torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)
        return out.reshape(bsz, self.inner_dim)

    def _embed(self, input_ids: Tensor) -> Tensor:
        """(B,) ids -> (B, D) input embeddings at ``self.position`` (the position row added)."""
        x = F.embedding(input_ids, self.embedding)
        if self.positions is not None:
            x = x + self.positions.index_select(0, self.position)
        return x

    def _decoder_hidden(self, input_ids: Tensor) -> Tensor:
        """Run every layer for one token per sequence at ``self.position``.

        Args:
            input_ids: (B,) long, the previous token of each sequence.

        Returns:
            (B, D) hidden state after the final layer norm (before the LM-head rescale).
        """
        bsz = input_ids.shape[0]
        h, d = self.num_heads, self.head_dim
        pos = self.position
        x = self._embed(input_ids)  # (B, D)
        self_bias = self.self_bias.index_select(0, pos).unsqueeze(2)  # (1, H, 1, T)
        cross_bias = self.cross_mask[:bsz]  # (B, 1, 1, Le)
        for i, layer in enumerate(self.layers):
            y = _rms_norm(x, layer.ln_self, self.eps)
            qkv = F.linear(y, layer.qkv).view(bsz, 3, h, d)
            cache = self.kv_cache[i, :, :bsz]  # (2, B, H, T, d)
            cache.index_copy_(3, pos, qkv[:, 1:].transpose(0, 1).unsqueeze(3))
            a = self._attend(qkv[:, 0].unsqueeze(2), cache[0], cache[1], self_bias)
            x = torch.addmm(x, a, layer.o.t())
            y = _rms_norm(x, layer.ln_cross, self.eps)
            q = F.linear(y, layer.q_cross).view(bsz, h, 1, d)
            cross = self.cross_kv[i, :, :bsz]
            a = self._attend(q, cross[0], cross[1], cross_bias)
            x = torch.addmm(x, a, layer.o_cross.t())
            y = _rms_norm(x, layer.ln_ff, self.eps)
            if self.gated:
                gate, lin = F.linear(y, layer.wi).view(bsz, 2, self.d_ff).unbind(1)
                u = self._act(gate) * lin
            else:
                u = self._act(F.linear(y, layer.wi))
            x = torch.addmm(x, u, layer.wo.t())
        return _rms_norm(x, self.final_ln, self.eps)

    def _decoder_hidden_triton(self, input_ids: Tensor) -> Tensor:
        """:meth:`_decoder_hidden` with the fused Triton kernels (8 launches per layer)."""
        return _rms_norm(self._triton_layers(self._embed(input_ids)), self.final_ln, self.eps)

    def _triton_layers(self, x: Tensor) -> Tensor:
        """Every layer over the input embeddings x (B, D); returns the residual stream before the
        final layer norm."""
        bsz = x.shape[0]
        h, d = self.num_heads, self.head_dim
        inner, pdl = self.inner_dim, self.pdl
        self_bias = self.self_bias
        length, enc_len = self.max_length, self.max_encoder_length
        self_block, self_warps = ATTENTION_CONFIGS["self"]
        cross_block, cross_warps = ATTENTION_CONFIGS["cross"]
        for i, layer in enumerate(self.layers):
            qkv = _triton_gemv(x, layer.qkv, norm_eps=self.eps, pdl=pdl)  # (B, 3 * inner), q | k | v
            attn = torch.empty(bsz, inner, device=x.device, dtype=x.dtype)
            cache = self.kv_cache[i]
            _decode_attention_kernel[(bsz * h,)](
                qkv, 3 * inner, qkv[:, inner:], cache[0], cache[1], h * length * d, length * d,
                self_bias, 0, length, h * length, self.position, attn, length, h,
                SELF=True, HEAD_DIM=d, BLOCK_T=self_block, PDL=pdl, num_warps=self_warps, launch_pdl=pdl,
            )  # fmt: skip
            x = _triton_gemv(attn, layer.o, residual=x, pdl=pdl)
            q = _triton_gemv(x, layer.q_cross, norm_eps=self.eps, pdl=pdl)
            attn = torch.empty(bsz, inner, device=x.device, dtype=x.dtype)
            cross = self.cross_kv[i]
            _decode_attention_kernel[(bsz * h,)](
                q, inner, q, cross[0], cross[1], h * enc_len * d, enc_len * d,
                self.cross_mask, enc_len, 0, 0, self.position, attn, enc_len, h,
                SELF=False, HEAD_DIM=d, BLOCK_T=cross_block, PDL=pdl, num_warps=cross_warps, launch_pdl=pdl,
            )  # fmt: skip
            x = _triton_gemv(attn, layer.o_cross, residual=x, pdl=pdl)
            u = _triton_gemv(x, layer.wi, norm_eps=self.eps, act=self._triton_act, gated=self.gated, pdl=pdl)
            x = _triton_gemv(u, layer.wo, residual=x, pdl=pdl)
        return x

    def _full_step(self) -> None:
        """One step over the full vocabulary into ``step_logits`` / ``step_hidden`` (step_fn path)."""
        bsz = self._batch
        hidden = self._layers_fn(self.input_ids[:bsz])
        self.step_hidden[:bsz].copy_(hidden)
        self.step_logits[:bsz].copy_(F.linear(hidden * self.head_scale, self.lm_head))
        self.position.add_(1)

    @torch.no_grad()
    def step_fn(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """A ``decoding.decode``-compatible step function over the prefilled batch.

        Call :meth:`prefill` first; the returned callable takes ``input_ids (B, 1)`` (the start
        token first) and returns ``(logits (B, V) float32, hidden (B, D))`` — fresh tensors, never
        views of the engine's static buffers — and advances the cache by one position. On CUDA the
        step is replayed from a captured graph.
        """
        if self._batch == 0:
            raise RuntimeError("call prefill() before step_fn()")
        bsz = self._batch
        graph = self._graph(("step", bsz), self._full_step) if self.use_cuda_graph else None

        @torch.no_grad()
        def step(input_ids: Tensor) -> tuple[Tensor, Tensor]:
            if tuple(input_ids.shape) != (bsz, 1):
                raise ValueError(f"input_ids must be ({bsz}, 1), got {tuple(input_ids.shape)}")
            if int(self.position) >= self.max_length:  # one sync per step: this is the plain path
                raise RuntimeError(f"the static cache holds {self.max_length} steps; reset() first")
            self.input_ids[:bsz].copy_(input_ids[:, 0])
            if graph is None:
                self._full_step()
            else:
                graph.replay()
            return self.step_logits[:bsz].clone(), self.step_hidden[:bsz].clone()

        return step

    # --- the fused detection path ----------------------------------------------------------------
    def _head_rows(
        self, rows: DetectionRows
    ) -> tuple[tuple, tuple[list[Tensor], list[Tensor], list[Tensor] | None, list[int]]]:
        """Per position in an object: the LM-head rows (rescale folded in) and their vocabulary ids.

        Returns ``(key, (weights, ids, folded, choose))``; ``weights[p]`` is (R_p, D), ``ids[p]`` (R_p,)
        long, ``folded[p]`` the same rows with the final layer norm's weight folded in (for the
        Triton head kernel; ``None`` with torch kernels), ``choose[p]`` how many leading rows may be
        chosen (the rest are score-only). Cached per row set, so a captured graph keeps pointing at
        live tensors.
        """
        key = (
            tuple(rows.coord_ids.tolist()),
            tuple(rows.class_ids.tolist()),
            tuple(rows.score_only_ids.tolist()),
        )
        if key not in self._row_cache:
            ids = [rows.allowed(p).to(self.device) for p in range(TOKENS_PER_OBJECT)]
            weights = [(self.lm_head.index_select(0, i) * self.head_scale).contiguous() for i in ids]
            folded = None
            if self.kernels == "triton":
                ln = self.final_ln.float()
                folded = [(w.float() * ln).to(self.dtype).contiguous() for w in weights]
            choose = [rows.choosable(p) for p in range(TOKENS_PER_OBJECT)]
            self._row_cache[key] = (weights, ids, folded, choose)
        return key, self._row_cache[key]

    def _object_block(self, do_sample: bool) -> None:
        """Decode one object: 5 steps, each with the head rows its grammar position allows."""
        bsz = self._batch
        weights, ids, _, choose = self._active_rows
        pos = self.position
        for p in range(TOKENS_PER_OBJECT):
            hidden = self._layers_fn(self.input_ids[:bsz])
            logits = F.linear(hidden, weights[p]).float() / self.temperature  # (B, R_p)
            if p == 0:  # column 0 is EOS, the rest coordinates: the boundary rules of this step
                logits[:, :1] += self.eos_bias.index_select(0, pos)
                logits[:, 1:] += self.coord_bias.index_select(0, pos)
            probs = torch.softmax(logits, dim=-1)  # the score's softmax (score-only rows included)
            pickable = logits[:, : choose[p]]
            if do_sample:
                pick_probs = probs if choose[p] == logits.shape[1] else torch.softmax(pickable, dim=-1)
                sorted_p, order = pick_probs.sort(dim=-1, descending=True)
                keep = (sorted_p.cumsum(-1) - sorted_p) < self.top_p  # the top token always stays
                noise = torch.empty_like(sorted_p).exponential_(1.0)  # Gumbel-max via exponentials
                pick = (sorted_p * keep / noise).argmax(-1, keepdim=True)
                choice = order.gather(1, pick)
            else:
                choice = pickable.argmax(-1, keepdim=True)
            score = probs.gather(1, choice).squeeze(1)
            token = ids[p].index_select(0, choice.squeeze(1))
            done = self.done[:bsz]
            token = token.masked_fill(done, PAD_ID)
            self.out_ids[:bsz].index_copy_(1, pos, token.unsqueeze(1))
            self.out_scores[:bsz].index_copy_(1, pos, score.masked_fill(done, 0.0).unsqueeze(1))
            self.out_hidden[:bsz].index_copy_(1, pos, hidden.unsqueeze(1))
            done |= token == EOS_ID
            self.input_ids[:bsz].copy_(token)
            pos.add_(1)

    def _object_block_fused(self) -> None:
        """:meth:`_object_block` for greedy decoding with ``kernels="triton"``: per step, the layers,
        then one kernel for the grammar rows' logits (final layer norm folded in) and one for the
        pick and every output and state update (:func:`_pick_kernel`)."""
        bsz = self._batch
        _, ids, folded, choose = self._active_rows
        positions = self.positions if self.positions is not None else self.embedding  # any pointer
        for p in range(TOKENS_PER_OBJECT):
            x = self._triton_layers(self.x_next[:bsz])
            logits = _triton_gemv(x, folded[p], norm_eps=self.eps, pdl=self.pdl, out_dtype=torch.float32)
            _pick_kernel[(1,)](
                logits, logits.shape[1], choose[p], ids[p], self.temperature, self.eos_bias,
                self.coord_bias, self.position, self.done, self.input_ids, self.out_ids, self.out_scores,
                self.out_hidden, x, self.final_ln, self.eps, self.embedding, positions, self.x_next,
                bsz, self.max_length, self.d_model,
                BOUNDARY=p == 0, HAS_POSITIONS=self.positions is not None, PAD=PAD_ID, EOS=EOS_ID,
                BLOCK_R=triton.next_power_of_2(logits.shape[1]), BLOCK_D=triton.next_power_of_2(self.d_model),
                num_warps=4,
            )  # fmt: skip

    def _graph(self, key: tuple, fn: Callable[[], None]) -> torch.cuda.CUDAGraph:
        """Capture ``fn`` once per key (after a warm-up on a side stream, as CUDA graphs require).

        The warm-up really runs ``fn``, so callers reset the decoder state after capturing.
        """
        graph = self._graphs.get(key)
        if graph is None:
            self.reset()  # the warm-up decodes from position 0, inside the cache
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            self._graphs[key] = graph
            self.reset()
        return graph

    @torch.no_grad()
    def generate_detection(
        self,
        rows: DetectionRows,
        max_new_tokens: int = 501,
        do_sample: bool = False,
        top_p: float | None = None,
        temperature: float = 1.0,
        eos_logit_offset: float = 0.0,
        min_objects: int = 0,
        max_objects: int | None = None,
        check_every: int = 4,
    ) -> FastDecodeOutput:
        """Decode Pix2Seq detection sequences for the prefilled batch.

        The rules are those of ``decoding.decode`` with the detection grammar: EOS only between
        objects; an object is started only if it and the EOS after it fit in ``max_new_tokens`` (so
        every sequence that ends, ends with whole objects); EOS is illegal before ``min_objects``
        objects (unless no further object would fit) and forced after ``max_objects``; logits are
        divided by ``temperature`` and then ``eos_logit_offset`` is added to EOS.

        Args:
            rows: the detection grammar's rows (:meth:`DetectionRows.from_vocab`).
            max_new_tokens: step budget (Pix2Seq: ``5 * max_objects + 1``).
            do_sample: nucleus sampling instead of greedy argmax.
            top_p: nucleus mass kept when sampling (Pix2Seq uses 0.4); ``None`` keeps everything.
            temperature: logits are divided by it before the softmax (> 0).
            eos_logit_offset: added to the EOS logit (Pix2Seq's precision/recall trade-off).
            min_objects: EOS is illegal before this many objects (benchmarks force 100).
            max_objects: EOS is forced after this many objects; ``None`` = only the budget limits.
            check_every: objects decoded between two reads of "has every sequence ended" (each read
                is one host-device sync).

        Returns:
            :class:`FastDecodeOutput`, trimmed to the longest sequence.
        """
        if self._batch == 0:
            raise RuntimeError("call prefill() before generate_detection()")
        if not TOKENS_PER_OBJECT + 1 <= max_new_tokens <= self.max_length:
            raise ValueError(
                f"max_new_tokens must be in [{TOKENS_PER_OBJECT + 1}, {self.max_length}] (one object + "
                f"EOS .. the engine's max_length), got {max_new_tokens}"
            )
        top_p = 1.0 if top_p is None else top_p
        if not 0.0 < top_p <= 1.0 or temperature <= 0.0 or check_every < 1:
            raise ValueError("need 0 < top_p <= 1, temperature > 0 and check_every >= 1")
        if min_objects < 0 or (max_objects is not None and max_objects < min_objects):
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        rows_key, self._active_rows = self._head_rows(rows)
        fused = self.kernels == "triton" and not do_sample and self._fused_tail
        block = self._object_block_fused if fused else lambda: self._object_block(do_sample)
        graph = None
        if self.use_cuda_graph:
            key = ("object", rows_key, self._batch, do_sample)
            graph = self._graph(key, block)
        self.reset()
        self._set_boundary_rules(max_new_tokens, eos_logit_offset, min_objects, max_objects)
        self.temperature.fill_(temperature)
        self.top_p.fill_(top_p)
        bsz = self._batch
        num_objects = -(-max_new_tokens // TOKENS_PER_OBJECT)
        for obj in range(num_objects):
            if graph is None:
                block()
            else:
                graph.replay()
            if (obj + 1) % check_every == 0 and bool(self.done[:bsz].all()):
                break
        return self._collect(max_new_tokens)

    def _set_boundary_rules(
        self, budget: int, eos_logit_offset: float, min_objects: int, max_objects: int | None
    ) -> None:
        """Fill ``eos_bias`` / ``coord_bias`` for every object-boundary step ``t = 5 k``."""
        steps = torch.arange(self.max_length)
        objects_before = steps // TOKENS_PER_OBJECT
        remaining = budget - steps - 1
        coords_ok = remaining >= TOKENS_PER_OBJECT  # 3 more coordinates, the class, then EOS
        if max_objects is not None:
            coords_ok &= objects_before < max_objects
        eos_ok = ~coords_ok | (objects_before >= min_objects)
        inf = float("-inf")
        self.eos_bias.copy_(torch.where(eos_ok, eos_logit_offset, inf))
        self.coord_bias.copy_(torch.where(coords_ok, 0.0, inf))

    def _collect(self, max_new_tokens: int) -> FastDecodeOutput:
        bsz = self._batch
        ids = self.out_ids[:bsz, :max_new_tokens]
        is_eos = ids == EOS_ID
        first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, max_new_tokens)
        length = int(first_eos.max())
        return FastDecodeOutput(
            sequences=ids[:, :length].clone(),
            token_scores=self.out_scores[:bsz, :length].clone(),
            hidden_states=self.out_hidden[:bsz, :length].clone(),
            lengths=first_eos.long(),
        )


def fast_generate_detection(
    t5: nn.Module,
    encoder_hidden_states: Tensor,
    encoder_attention_mask: Tensor | None,
    vocab: PixtokVocab,
    max_new_tokens: int = 501,
    do_sample: bool = False,
    top_p: float | None = None,
    temperature: float = 1.0,
    eos_logit_offset: float = 0.0,
    min_objects: int = 0,
    max_objects: int | None = None,
    decoder: StaticT5Decoder | None = None,
    dtype: torch.dtype | None = None,
    check_every: int = 4,
    rank_against_noise: bool = True,
) -> FastDecodeOutput:
    """Greedy or nucleus decoding of detection sequences through :class:`StaticT5Decoder`.

    Same outputs as ``decoding.decode(engine.step_fn(), grammar_for("detection", vocab), ...)``
    (greedy: identical tokens). Building the engine copies the decoder weights and, on CUDA,
    captures graphs on first use: pass ``decoder=`` to reuse one across calls.

    Args:
        t5: the ``T5ForConditionalGeneration`` whose decoder writes the tokens (ignored when
            ``decoder`` is given).
        encoder_hidden_states: (B, L, D) encoder output.
        encoder_attention_mask: (B, L) 1 = attend; ``None`` = all ones.
        vocab: the pixtok vocabulary (closed-set classes; ``<noise>`` is never generated).
        max_new_tokens, do_sample, top_p, temperature, eos_logit_offset, min_objects, max_objects,
            check_every: see :meth:`StaticT5Decoder.generate_detection`.
        decoder: an engine to reuse (its batch/length limits must fit).
        dtype: engine dtype when building one (defaults to the LM head's dtype).
        rank_against_noise: class scores against ``<noise>`` too (:meth:`DetectionRows.from_vocab`).

    Returns:
        :class:`FastDecodeOutput` on the engine's device.
    """
    if decoder is None:
        decoder = StaticT5Decoder(
            t5,
            max_batch_size=encoder_hidden_states.shape[0],
            max_length=max_new_tokens,
            max_encoder_length=encoder_hidden_states.shape[1],
            dtype=dtype or t5.lm_head.weight.dtype,
            device=encoder_hidden_states.device,
        )
    decoder.prefill(encoder_hidden_states, encoder_attention_mask)
    return decoder.generate_detection(
        DetectionRows.from_vocab(vocab, rank_against_noise=rank_against_noise),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        top_p=top_p,
        temperature=temperature,
        eos_logit_offset=eos_logit_offset,
        min_objects=min_objects,
        max_objects=max_objects,
        check_every=check_every,
    )


__all__ = [
    "TOKENS_PER_OBJECT",
    "DetectionRows",
    "FastDecodeOutput",
    "StaticT5Decoder",
    "fast_generate_detection",
    "merged_linear_weight",
]

"""PixelLLM's small heads and the losses they train with.

- :class:`TraceHead`: MLP on every decoder state -> one (x, y) point per output token (L1).
- :class:`BoxHead`: MLP on the EOS decoder state -> the referred box (L1 + GIoU).
- :class:`ProposalHead`: per-cell objectness + box on the fused image features, CenterNet style:
  the cell that holds a ground-truth box's centre is responsible for it (focal + L1 + GIoU).
- the LM loss (label-smoothed cross-entropy with per-token weights) and the mask losses
  (sigmoid focal + dice) used with SAM's mask decoder.

Every coordinate here is in model space (normalized to the padded square), boxes ``xyxy``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them.

    Args:
        input_size: channels in.
        hidden_size: channels of the hidden layers.
        output_size: channels out.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
        sizes = [input_size] + [hidden_size] * (num_layers - 1) + [output_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_size) -> (..., output_size)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# --- box arithmetic -------------------------------------------------------------------------------
def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre/size -> (..., 4) corners, same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_iou_and_giou(
    a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU and generalized IoU of two aligned box sets.

    Args:
        a: (..., 4) xyxy.
        b: (..., 4) xyxy, same shape as ``a``.

    Returns:
        (iou, giou), each (...,).
    """
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    hull = (
        (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    )
    giou = iou - (hull - union) / (hull + eps)
    return iou, giou


def box_regression_loss(
    pred: torch.Tensor, target: torch.Tensor, l1_weight: float, giou_weight: float
) -> torch.Tensor:
    """``l1_weight * L1 + giou_weight * (1 - GIoU)``, averaged over boxes.

    Args:
        pred: (N, 4) xyxy model space.
        target: (N, 4) xyxy model space; N >= 1.
    """
    l1 = (pred - target).abs().sum(-1).mean()
    _, giou = box_iou_and_giou(pred.float(), target.float())
    return l1_weight * l1 + giou_weight * (1 - giou).mean()


# --- token losses ---------------------------------------------------------------------------------
def weighted_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    label_smoothing: float,
    num_classes: int | None = None,
    coordinate_bins: tuple[int, int] | None = None,
    coordinate_sigma: float = 0.0,
) -> torch.Tensor:
    """Label-smoothed cross-entropy, weighted per token, normalized by the valid-token weight.

    With ``coordinate_sigma > 0`` a coordinate target is not its bin alone but a Gaussian over the
    bins around it (std ``coordinate_sigma`` bins, cut at 3 std, renormalized at the ends of the
    range): a prediction a few bins off is then nearly right instead of as wrong as any other bin,
    so fine bins (1,000 over a 128 px image is ~8 per pixel) learn a coarse position first. The
    optimum is still the target bin's distribution centred on it, so greedy decoding is unbiased.
    The vocabulary-wide ``label_smoothing`` applies on top, as for every other token.

    Args:
        logits: (B, T, V).
        labels: (B, T) long, -100 where there is no target.
        weights: (B, T) float per-token weights (Pix2Seq: 0 on noise coordinates, 0.1 on EOS).
        label_smoothing: smoothing mass spread over the vocabulary.
        num_classes: the real vocabulary size when the LM head is padded past it
            (``config.pad_vocab_to_multiple_of``): only the first ``num_classes`` logits take part,
            so the padded ids get neither probability nor smoothing mass and the loss is that of
            the unpadded head. `None`: all ``V``.
        coordinate_bins: ``(first id, number of bins)`` of the coordinate tokens; needed when
            ``coordinate_sigma > 0``.
        coordinate_sigma: std, in bins, of the coordinate targets' Gaussian; 0 = one-hot.

    Returns:
        scalar ``sum(w * ce) / sum(w)`` over tokens with a target (0 when no token has weight).
    """
    valid = labels != -100
    if num_classes is not None and num_classes < logits.shape[-1]:
        # sliced before the float copy, so bf16 logits are still copied once
        logits = logits[..., :num_classes]
    logits = logits.float()
    targets = labels.clamp(min=0)
    ce = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), reduction="none", label_smoothing=label_smoothing
    ).view_as(labels)
    if coordinate_sigma > 0:
        if coordinate_bins is None:
            raise ValueError("coordinate_sigma > 0 needs coordinate_bins (first id, number of bins)")
        ce = ce + (1.0 - label_smoothing) * _soft_coordinate_correction(
            logits, targets, valid, coordinate_bins, coordinate_sigma
        )
    w = weights.float() * valid
    return (ce * w).sum() / w.sum().clamp(min=1e-6)


class LMLoss(nn.Module):
    """:func:`weighted_lm_loss` as a module (no parameters), so that training can compile it alone.

    The loss reads the whole ``(B, T, V)`` logits a few times over in float32 (cast, log-softmax,
    smoothing sum, and their backward): at a 33k-id vocabulary and 16k target tokens, ~1 GB of bf16
    logits and eager kernels that each stream 2 GB. ``compile_alone`` asks regional compilation
    (``pixtok.training.compilation``) to compile it by itself, into a few fused kernels, without
    CUDA graphs (its input is a large activation made outside any graph, which a graph would copy).
    """

    compile_alone = True

    def forward(self, *args, **kwargs) -> torch.Tensor:
        """:func:`weighted_lm_loss`, with its arguments."""
        return weighted_lm_loss(*args, **kwargs)


def _soft_coordinate_correction(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    coordinate_bins: tuple[int, int],
    sigma: float,
) -> torch.Tensor:
    """``z[t] - sum_k q_k z[t + k]`` at coordinate targets (0 elsewhere): what turns the one-hot
    cross-entropy ``lse - z[t]`` into the Gaussian target's ``lse - sum_k q_k z[t + k]``.

    Only the ``6 sigma + 1`` logits around each target are read (a gather), not the whole range.
    """
    first, count = coordinate_bins
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=logits.device)
    bins = targets - first
    is_coordinate = valid & (bins >= 0) & (bins < count)
    window = bins.clamp(0, count - 1).unsqueeze(-1) + offsets  # (B, T, K)
    inside = (window >= 0) & (window < count)
    q = torch.exp(-0.5 * (offsets.float() / sigma) ** 2) * inside
    q = q / q.sum(-1, keepdim=True)
    z = logits.gather(-1, window.clamp(0, count - 1) + first)
    z_target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.where(is_coordinate, z_target - (q * z).sum(-1), torch.zeros_like(z_target))


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the rows where ``mask`` is true; 0 when none is. A masked sum, not
    boolean indexing, so nothing is read back from the device.

    Args:
        pred: (..., K) predictions.
        target: (..., K) targets (NaN allowed where ``mask`` is false).
        mask: (...) bool.
    """
    weight = mask.unsqueeze(-1).float()
    diff = (pred.float() - torch.nan_to_num(target.float())).abs() * weight
    return diff.sum() / (weight.sum() * pred.shape[-1]).clamp(min=1.0)


# --- mask losses ----------------------------------------------------------------------------------
def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss (RetinaNet) per element, same shape as ``logits``; targets in {0, 1}."""
    logits = logits.float()
    targets = targets.float()
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def mask_losses(
    logits: torch.Tensor, targets: torch.Tensor, dice_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Focal (mean over pixels) and dice losses of binary masks.

    Args:
        logits: (N, H, W) mask logits.
        targets: (N, H, W) float in [0, 1].
        dice_rows: (N,) bool, the masks the dice term averages over (default: all). A mask whose
            target is empty has no region to overlap; the focal term alone pushes it to zero.

    Returns:
        (focal, dice) scalars: focal averaged over the N masks, dice over ``dice_rows``.
    """
    focal = sigmoid_focal_loss(logits, targets).flatten(1).mean(1).mean()
    if dice_rows is not None:
        logits, targets = logits[dice_rows], targets[dice_rows]
    prob = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    dice = 1 - (2 * (prob * t).sum(1) + 1) / (prob.sum(1) + t.sum(1) + 1)
    return focal, dice.mean()


# --- heads ----------------------------------------------------------------------------------------
class TraceHead(nn.Module):
    """Decoder states -> one point per token.

    Args:
        input_size: decoder width (T5 ``d_model``).
        hidden_size: MLP hidden width.
        num_layers: MLP depth.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.mlp = MLP(input_size, hidden_size, 2, num_layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, 2) xy in model space, in (0, 1)."""
        return self.mlp(hidden_states).sigmoid()


class BoxHead(nn.Module):
    """A decoder state (and, optionally, where the grounding map points) -> the referred box.

    PixelLLM regresses the box at the EOS state of an empty answer. pixtok's referring answer writes
    the box as four coordinate tokens before EOS, and under teacher forcing the EOS state has read the
    target's coordinates as inputs: a head trained there learns to copy them, and at inference copies
    the model's own (wrong) ones. The model therefore feeds this head the first output step's state,
    which has read only the image and the prompt, in training and in generation alike.

    With ``extra_size`` > 0 the head also reads a small vector beside the state: the grounding map's
    summary (:func:`grounding_moments`, ``config.box_head_grounding``).

    Args:
        input_size: decoder width (T5 ``d_model``).
        hidden_size: MLP hidden width.
        num_layers: MLP depth.
        extra_size: features read beside the state (0: none).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, extra_size: int = 0) -> None:
        super().__init__()
        self.extra_size = extra_size
        self.mlp = MLP(input_size + extra_size, hidden_size, 4, num_layers)

    def forward(self, state: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) [+ (B, extra_size)] -> (B, 4) xyxy model space (predicted as centre/size in (0, 1),
        so x0 <= x1)."""
        if self.extra_size:
            if extra is None:
                raise ValueError(f"this box head reads {self.extra_size} extra features beside the state")
            state = torch.cat([state, extra.to(state.dtype)], dim=-1)
        return cxcywh_to_xyxy(self.mlp(state).sigmoid())


GROUNDING_MOMENTS = 8
"""Length of :func:`grounding_moments`' vector."""


def grounding_moments(logits: torch.Tensor) -> torch.Tensor:
    """Where a (B, s, s) grounding map points, as (B, 8) numbers in [0, 1]: the probability map's
    centroid (x, y), spread (std x, y), mass (mean probability), and its peak cell's centre (x, y)
    and probability. Cells are the extractor's, so coordinates are model space; the centroid alone
    would fall between two lit objects, the peak picks one."""
    prob = logits.float().sigmoid()
    side = prob.shape[-1]
    centres = (torch.arange(side, device=prob.device, dtype=prob.dtype) + 0.5) / side
    mass = prob.sum((1, 2)).clamp(min=1e-6)
    px, py = prob.sum(1), prob.sum(2)  # (B, s): column and row marginals
    mx, my = (px * centres).sum(1) / mass, (py * centres).sum(1) / mass
    sx = ((px * (centres - mx[:, None]) ** 2).sum(1) / mass).sqrt()
    sy = ((py * (centres - my[:, None]) ** 2).sum(1) / mass).sqrt()
    peak, index = prob.flatten(1).max(1)
    peak_y, peak_x = centres[index // side], centres[index % side]
    return torch.stack([mx, my, sx, sy, mass / side**2, peak_x, peak_y, peak], dim=1)


class GroundingHead(nn.Module):
    """T5 encoder states at the extractor's grid tokens -> what each cell holds, one logit per channel.

    The grid tokens enter the T5 encoder beside the prompt's tokens; this head reads them back out.
    pixtok uses it twice, as a training signal (PixelLLM and Pix2Seq have no such head):

    - referring (``grounding_head``, 1 channel): "the object the text names covers this cell",
      against the referred mask pooled to the grid (:meth:`targets`); to lower it the encoder must tie
      the expression's words to image positions;
    - detection (``class_map_head``, one channel per class): "an object of class c covers this cell",
      against the boxes rasterised to the grid (:meth:`box_targets`); a dense signal on the image
      tokens where the sequence loss reaches the encoder only through cross-attention.

    Args:
        input_size: encoder width (T5 ``d_model``).
        offset: index of the first grid token in the encoder sequence (the extractor's learnable tokens
            come first).
        side: grid tokens per side.
        channels: logits per cell.
    """

    def __init__(self, input_size: int, offset: int, side: int, channels: int = 1) -> None:
        super().__init__()
        self.offset, self.side, self.channels = offset, side, channels
        self.proj = nn.Linear(input_size, channels)

    def forward(self, encoder_states: torch.Tensor) -> torch.Tensor:
        """(B, L, D) encoder output -> (B, channels, side, side) logits, the grid row-major as the
        extractor lays it."""
        grid = encoder_states[:, self.offset : self.offset + self.side**2]
        return self.proj(grid).transpose(1, 2).unflatten(2, (self.side, self.side))

    def targets(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, H, W) masks in model space, values in [0, 1] -> (N, side, side) covered fraction of
        each cell (the extractor's ``adaptive_avg_pool2d`` cells)."""
        return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), self.side).squeeze(1)

    def box_targets(self, boxes: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Boxes rasterised to the grid, one map per class.

        Args:
            boxes: (B, N, 4) xyxy model space ([0, 1] over the padded square, as the grid's cells).
            classes: (B, N) long in ``[0, channels)``, -1 on padding.

        Returns:
            (B, channels, side, side): per class, the largest fraction of each cell one of its boxes
            covers (two boxes of a class over one cell do not add up past 1).
        """
        edges = torch.arange(self.side + 1, device=boxes.device, dtype=torch.float32) / self.side
        b = boxes.float().clamp(0, 1)

        def overlap(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, side)
            top = torch.minimum(hi[..., None], edges[1:])
            bottom = torch.maximum(lo[..., None], edges[:-1])
            return (top - bottom).clamp(min=0) * self.side

        cover = overlap(b[..., 1], b[..., 3])[..., :, None] * overlap(b[..., 0], b[..., 2])[..., None, :]
        valid = classes >= 0
        cover = (cover * valid[..., None, None]).flatten(2)  # (B, N, side²)
        index = classes.clamp(min=0)[..., None].expand_as(cover)
        out = cover.new_zeros(boxes.shape[0], self.channels, self.side**2)
        out = out.scatter_reduce(1, index, cover, reduce="amax")
        return out.unflatten(2, (self.side, self.side))


class ProposalHead(nn.Module):
    """Class-agnostic box proposals on the feature grid (for dense captioning).

    Each of the ``g x g`` cells predicts an objectness logit and one box whose centre lies inside
    that cell. Training assigns each ground-truth box to the cell holding its centre.

    Args:
        in_channels: channels of the fused image features.
        hidden_size: channels of the two 3x3 convolutions.
    """

    def __init__(self, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, hidden_size, 3, padding=1),
            nn.GroupNorm(1, hidden_size),
            nn.ReLU(),
            nn.Conv2d(hidden_size, hidden_size, 3, padding=1),
            nn.ReLU(),
        )
        self.objectness = nn.Conv2d(hidden_size, 1, 1)
        self.box = nn.Conv2d(hidden_size, 4, 1)
        nn.init.constant_(self.objectness.bias, -4.6)  # prior 0.01, as RetinaNet

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict per cell.

        Args:
            features: (B, C, g, g) fused image features.

        Returns:
            objectness logits (B, g*g) and boxes (B, g*g, 4) xyxy model space, cells row-major.
        """
        x = self.trunk(features)
        b, _, g, _ = x.shape
        logits = self.objectness(x).flatten(1)
        raw = self.box(x).flatten(2).transpose(1, 2).sigmoid()  # (B, g*g, 4)
        idx = torch.arange(g * g, device=x.device)
        col = (idx % g).to(raw.dtype)
        row = (idx // g).to(raw.dtype)
        cx = (col + raw[..., 0]) / g
        cy = (row + raw[..., 1]) / g
        boxes = cxcywh_to_xyxy(torch.stack([cx, cy, raw[..., 2], raw[..., 3]], dim=-1))
        return logits, boxes

    @staticmethod
    def assign(gt_boxes: torch.Tensor, gt_mask: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell targets: each valid ground-truth box goes to the cell holding its centre.

        When two boxes share a cell, the smaller one wins (it is the harder one to find later).

        Args:
            gt_boxes: (B, N, 4) xyxy model space.
            gt_mask: (B, N) bool, valid boxes.
            grid: g.

        Returns:
            positive (B, g*g) bool and box targets (B, g*g, 4) (zeros on negative cells).
        """
        b, n, _ = gt_boxes.shape
        centres = (gt_boxes[..., :2].float() + gt_boxes[..., 2:].float()) / 2
        # clamp the cell, not the coordinate: in bf16, 1 - 1e-6 rounds to 1.0 (cell g, out of range)
        cells = (centres * grid).floor().long().clamp(0, grid - 1)
        cell_index = cells[..., 1] * grid + cells[..., 0]  # (B, N)
        area = (gt_boxes[..., 2:] - gt_boxes[..., :2]).clamp(min=0).prod(-1)
        positive = torch.zeros(b, grid * grid, dtype=torch.bool, device=gt_boxes.device)
        targets = torch.zeros(b, grid * grid, 4, dtype=gt_boxes.dtype, device=gt_boxes.device)
        order = area.argsort(dim=1, descending=True)  # larger first, smaller overwrite
        for i in range(b):
            for j in order[i].tolist():
                if bool(gt_mask[i, j]):
                    positive[i, cell_index[i, j]] = True
                    targets[i, cell_index[i, j]] = gt_boxes[i, j]
        return positive, targets

    def loss(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
        objectness_weight: float,
        l1_weight: float,
        giou_weight: float,
    ) -> torch.Tensor:
        """Focal objectness over all cells (normalized by positives) + box loss on positive cells.

        Args:
            logits: (B, g*g) objectness logits.
            boxes: (B, g*g, 4) predicted xyxy.
            gt_boxes: (B, N, 4) ground truth xyxy model space.
            gt_mask: (B, N) bool, at least one true in the batch.
        """
        grid = int(round(logits.shape[1] ** 0.5))
        positive, targets = self.assign(gt_boxes, gt_mask, grid)
        num_pos = positive.sum().clamp(min=1)
        focal = sigmoid_focal_loss(logits, positive.to(logits.dtype)).sum() / num_pos
        box = box_regression_loss(boxes[positive], targets[positive], l1_weight, giou_weight)
        return objectness_weight * focal + box


__all__ = [
    "MLP",
    "BoxHead",
    "GROUNDING_MOMENTS",
    "GroundingHead",
    "ProposalHead",
    "TraceHead",
    "grounding_moments",
    "box_iou_and_giou",
    "box_regression_loss",
    "cxcywh_to_xyxy",
    "mask_losses",
    "masked_l1",
    "sigmoid_focal_loss",
    "weighted_lm_loss",
]

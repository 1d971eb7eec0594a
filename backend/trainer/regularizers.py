"""PyTC v1.0.0's regularisers (MODEL.REGU_OPT): consistency terms between output channels.

Each takes the raw (pre-activation) channels of its REGU_TARGET targets and an optional
mask, and returns a scalar mean; the Criterion multiplies it by REGU_WEIGHT.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Regularizer = Callable[..., Tensor]

_EDGE_EPS = 1e-7


def _masked_mean(loss: Tensor, mask: Tensor | None) -> Tensor:
    return (loss if mask is None else loss * mask).mean()


def binary(pred: Tensor, mask: Tensor | None = None) -> Tensor:
    """'Binary': 1 / max(|sigmoid(x) - 0.5|, 0.01), pushing outputs away from 0.5."""
    diff = torch.clamp((torch.sigmoid(pred) - 0.5).abs(), min=1e-2)
    return _masked_mean(1.0 / diff, mask)


def foreground_dt(pred1: Tensor, pred2: Tensor, mask: Tensor | None = None) -> Tensor:
    """'FgDT': foreground logits agree with the sign of the distance tanh(pred2)."""
    distance = torch.tanh(pred2)
    loss = -F.logsigmoid(pred1) * distance.clamp(min=0.0)
    loss = loss - F.logsigmoid(-pred1) * (-distance.clamp(max=0.0))
    return _masked_mean(loss, mask)


def contour_dt(pred1: Tensor, pred2: Tensor, mask: Tensor | None = None) -> Tensor:
    """'ContourDT': contours only where the distance |tanh(pred2)| is near 0."""
    loss = (torch.sigmoid(pred1) * torch.tanh(pred2).abs()) ** 2
    return _masked_mean(loss, mask)


def foreground_contour(
    pred1: Tensor, pred2: Tensor, mask: Tensor | None = None, half: int = 1
) -> Tensor:
    """'FgContour': the contour probability matches the in-plane edges of the foreground
    probability ([1, 0, -1] gradients, magnitude clamped to (0, 1), max-pooled 3x3)."""
    if half != 1:
        raise ValueError("FgContour works with a half-width of 1 only (as in PyTC)")
    fg = torch.sigmoid(pred1)
    kernel = torch.tensor([1.0, 0.0, -1.0], dtype=fg.dtype, device=fg.device)
    edge_x = F.conv3d(fg, kernel.view(1, 1, 1, 1, 3), padding=(0, 0, 1))
    edge_y = F.conv3d(fg, kernel.view(1, 1, 1, 3, 1), padding=(0, 1, 0))
    edge = torch.sqrt(edge_x**2 + edge_y**2 + _EDGE_EPS).clamp(_EDGE_EPS, 1.0 - _EDGE_EPS)
    size = 2 * half + 1
    edge = F.max_pool3d(F.pad(edge, (1, 1, 1, 1, 0, 0)), kernel_size=(1, size, size), stride=1)
    loss = F.mse_loss(edge, torch.sigmoid(pred2), reduction="none")
    return _masked_mean(loss, mask)


def nonoverlap(pred: Tensor, fg_masked: bool = True) -> Tensor:
    """'Nonoverlap': pre- (channel 0) and post-synaptic (1) probabilities should not both be
    high; masked by the cleft probability (channel 2, detached)."""
    loss = torch.sigmoid(pred[:, 0]) * torch.sigmoid(pred[:, 1])
    if fg_masked:
        loss = loss * torch.sigmoid(pred[:, 2].detach())
    return loss.mean()


REGULARIZERS: dict[str, Regularizer] = {
    "Binary": binary,
    "FgContour": foreground_contour,
    "ContourDT": contour_dt,
    "FgDT": foreground_dt,
    "Nonoverlap": nonoverlap,
}

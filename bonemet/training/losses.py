"""Losses beyond plain BCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.8, gamma: float = 2.0,
               reduction: str = "mean") -> torch.Tensor:
    """Softmax focal loss over {normal, metastatic} (Lin et al. 2017), ``alpha`` weighting the metastatic class.

    ``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``alpha_t = alpha`` for metastatic slices and ``1 - alpha``
    for normal ones. For two logits it equals torchvision's ``sigmoid_focal_loss`` on ``logit_1 - logit_0``.
    """
    logp = F.log_softmax(logits, dim=1).gather(1, target.long().view(-1, 1))[:, 0]
    alpha_t = torch.where(target.bool(), torch.full_like(logp, alpha), torch.full_like(logp, 1 - alpha))
    loss = -alpha_t * (1 - logp.exp()).pow(gamma) * logp
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss

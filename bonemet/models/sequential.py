"""The sequential baseline of thesis Table 4.2: a bone U-Net, then a lesion model on the bone region.

Training feeds the lesion model the image times the true bone mask; at test time the bone U-Net's
prediction, dilated by a few pixels, takes its place and the lesion output is kept only inside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

OUTSIDE_LOGIT = -20.0  # sigmoid ~ 2e-9: "no lesion" outside the bone region


class SequentialSeg(nn.Module):
    """``forward(x, bone=None)`` returns ``(lesion_logits, bone_logits)``."""

    needs_bone_input = True

    def __init__(self, bone_net: nn.Module, lesion_net: nn.Module, dilate_px: int = 3) -> None:
        super().__init__()
        self.bone_net, self.lesion_net, self.dilate_px = bone_net, lesion_net, dilate_px

    def forward(self, x: torch.Tensor, bone: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        bone_logits = self.bone_net(x)
        if bone is None:  # test time: the network's own bone, dilated
            region = (bone_logits > 0).float()
            if self.dilate_px:
                k = 2 * self.dilate_px + 1
                region = F.max_pool2d(region, k, stride=1, padding=self.dilate_px)
        else:
            region = bone
        lesion_logits = self.lesion_net(x * region)
        lesion_logits = torch.where(region > 0, lesion_logits, torch.full_like(lesion_logits, OUTSIDE_LOGIT))
        return lesion_logits, bone_logits

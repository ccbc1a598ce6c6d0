"""The original system's per-iteration computation, re-implemented for cost comparison (README, Benchmarks).

One job at a time (batch 1), fp32: an MLP field 3->512->512->512->3 evaluated on all 33^3 LUT nodes gives
the LUT; it is applied to the 336 px image; ViT-L-14@336 encodes the result; the loss is the CLIP
similarity to the prompt plus LAB mean/std statistics against the input; backward through CLIP and the
MLP; Adam. Weights are random: cost does not depend on their values.
"""

from __future__ import annotations

import torch
from torch import nn

from clipdlut import lut as lutmath
from clipdlut.guidance import Guide
from clipdlut.losses import rgb_to_lab

LUT_NODES = 33
STEPS = 1000  # the original default


class LutField(nn.Module):
    """The original LUT parameterisation: an MLP from each node's colour to its offset."""

    def __init__(self, width: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3))

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        n = nodes.shape[-1]
        flat = nodes.reshape(3, -1).T  # every node's colour
        return (nodes + self.net(flat).T.reshape(1, 3, n, n, n)).clamp(0, 1)


class OriginalJob:
    """One job of the original system: :meth:`step` is one optimizer iteration."""

    def __init__(self, guide: Guide, image: torch.Tensor, prompt: str, seed: int = 0):
        torch.manual_seed(seed)
        self.guide = guide
        self.field = LutField().to(guide.device)
        self.opt = torch.optim.Adam(self.field.parameters(), lr=1e-4)
        self.nodes = lutmath.identity(LUT_NODES, device=guide.device)
        size = guide.resolution
        self.image = torch.nn.functional.interpolate(image.unsqueeze(0).to(guide.device), size=(size, size),
                                                     mode="bicubic", align_corners=False).clamp(0, 1)
        self.text = guide.encode_text([prompt])[0]
        self.src_lab = rgb_to_lab(self.image)

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        out = lutmath.apply(self.field(self.nodes), self.image)
        feat = self.guide.encode_pixels(self.guide.normalize(out))[0]
        clip_loss = 1 - torch.nn.functional.cosine_similarity(feat, self.text, dim=0)
        lab = rgb_to_lab(out)
        stats = ((lab.mean((-1, -2)) - self.src_lab.mean((-1, -2))).abs().mean()
                 + (lab.std((-1, -2)) - self.src_lab.std((-1, -2))).abs().mean())
        loss = clip_loss + 0.01 * stats
        loss.backward()
        self.opt.step()
        return float(loss.detach())

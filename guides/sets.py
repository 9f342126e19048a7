"""Set networks with padding masks: the Set Transformer's multihead attention block and its
induced set attention block (Lee et al. 2019, "Set Transformer", ICML), and the masked
mean that DeepSets and neural processes aggregate with. Sets are ``(batch, n, dim)``
with a boolean ``mask`` ``(batch, n)`` (True: a real element); leading dimensions
(particles, draws) broadcast, so a set shared by several particles is projected once."""

from __future__ import annotations

import torch
from pyro.nn import PyroModule
from torch import nn

__all__ = ["masked_mean", "MAB", "ISAB"]


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real elements: ``h`` (..., n, d), ``mask`` (..., n) -> (..., d)."""
    w = mask.to(h.dtype)[..., None]
    return (h * w).sum(-2) / w.sum(-2).clamp_min(1.0)


class MAB(PyroModule):
    """``MAB(Q, K) = H + relu(W_o H)``, ``H = W_q Q + Multihead(W_q Q, W_k K, W_v K)``, the
    Set Transformer's block (heads concatenated, no layer norm: its default); keys outside
    ``key_mask`` are ignored. Leading dimensions of ``q``, ``k`` and ``key_mask``
    broadcast (a set shared by several particles is projected once)."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.fc_q = nn.Linear(dim, dim)
        self.fc_k = nn.Linear(dim, dim)
        self.fc_v = nn.Linear(dim, dim)
        self.fc_o = nn.Linear(dim, dim)

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        return h.unflatten(-1, (self.heads, -1)).transpose(-2, -3)  # (..., heads, n, d/h)

    def forward(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q = self.fc_q(q)
        qh, kh, vh = self._split(q), self._split(self.fc_k(k)), self._split(self.fc_v(k))
        bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~key_mask, float("-inf"))[..., None, None, :]
        scores = (qh * qh.shape[-1] ** -0.5) @ kh.transpose(-1, -2) + bias
        out = scores.softmax(-1) @ vh
        h = q + out.transpose(-2, -3).flatten(-2)
        return h + torch.relu(self.fc_o(h))


class ISAB(PyroModule):
    """``ISAB(X; I) = MAB(X, MAB(I, X))``: the ``m`` inducing points ``I`` attend to the set
    ``X``, and the set attends back to them; the output has one row per element of ``X``.
    Here the inducing points are an input (``inducing`` with ``inducing_mask``), not
    parameters, so random inducing points give a random transformation of the set."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.gather = MAB(dim, heads)
        self.spread = MAB(dim, heads)

    def forward(self, x, mask, inducing, inducing_mask):
        h = self.gather(inducing, x, mask)
        return self.spread(x, h, inducing_mask)

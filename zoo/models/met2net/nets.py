"""The networks: per-variable window encoders and decoders (grouped convolutions, one
group per variable; ``groups=1`` mixes the variables as channels) and the latent
translator with cross-variable attention. Codes are ``(C, hid, G/2, G/2)`` maps, flattened."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["WindowEncoder", "WindowDecoder", "Translator"]


class WindowEncoder(nn.Module):
    """``forward(frames) -> (loc, scale)``: a window ``(..., W, C, G, G)`` to the Normal
    parameters of its code ``(..., C * hid * (G/2)**2)``. With ``per_variable`` every
    variable has its own encoder (convolution groups); without, all variables enter one
    encoder as channels."""

    def __init__(self, num_vars: int, window: int, hid: int, per_variable: bool = True):
        super().__init__()
        c, groups = num_vars, num_vars if per_variable else 1
        self.num_vars, self.window = num_vars, window
        self.trunk = nn.Sequential(
            nn.Conv2d(c * window, c * hid, 3, 1, 1, groups=groups),
            nn.GELU(),
            nn.Conv2d(c * hid, c * hid, 3, 2, 1, groups=groups),
            nn.GELU(),
        )
        self.loc = nn.Conv2d(c * hid, c * hid, 1, groups=groups)
        self.log_scale = nn.Conv2d(c * hid, c * hid, 1, groups=groups)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = frames.shape[:-4]
        w, c, g, _ = frames.shape[-4:]
        x = frames.reshape(-1, w, c, g, g).transpose(1, 2).reshape(-1, c * w, g, g)
        h = self.trunk(x)
        loc = self.loc(h).reshape(*batch, -1)
        scale = F.softplus(self.log_scale(h) - 2.0).reshape(*batch, -1) + 1e-4
        return loc, scale


class WindowDecoder(nn.Module):
    """``forward(code) -> frames``: a code ``(..., C * hid * (G/2)**2)`` to the mean of
    its window ``(..., W, C, G, G)``; per variable (groups) or mixed, as the encoder."""

    def __init__(self, num_vars: int, window: int, hid: int, grid: int, per_variable=True):
        super().__init__()
        c, groups = num_vars, num_vars if per_variable else 1
        self.num_vars, self.window, self.hid, self.grid = num_vars, window, hid, grid
        self.net = nn.Sequential(
            nn.Conv2d(c * hid, c * hid, 3, 1, 1, groups=groups),
            nn.GELU(),
            nn.ConvTranspose2d(c * hid, c * hid, 4, 2, 1, groups=groups),
            nn.GELU(),
            nn.Conv2d(c * hid, c * window, 3, 1, 1, groups=groups),
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        batch = code.shape[:-1]
        c, w, g = self.num_vars, self.window, self.grid
        h = code.reshape(-1, c * self.hid, g // 2, g // 2)
        out = self.net(h).reshape(-1, c, w, g, g).transpose(1, 2)
        return out.reshape(*batch, w, c, g, g)


class CrossVariableAttention(nn.Module):
    """Self-attention across the C variables at each latent position: the variables'
    ``hid``-vectors are the tokens (``heads`` heads), maps ``(n, C * hid, S, S)`` in and
    out. Written with einsum over the channel layout (no token reshuffling)."""

    def __init__(self, num_vars: int, hid: int, heads: int):
        super().__init__()
        self.num_vars, self.hid, self.heads = num_vars, hid, heads
        self.norm = nn.GroupNorm(num_vars, num_vars * hid)  # a LayerNorm per variable token
        self.qkv = nn.Conv2d(num_vars * hid, 3 * num_vars * hid, 1)
        self.out = nn.Conv2d(num_vars * hid, num_vars * hid, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, _, s, _ = h.shape
        c, heads = self.num_vars, self.heads
        dh = self.hid // heads
        q, k, v = self.qkv(self.norm(h)).reshape(n, 3, c, heads, dh, s, s).unbind(1)
        scores = torch.einsum("nchdxy,nkhdxy->nhckxy", q, k) / dh**0.5
        att = torch.einsum("nhckxy,nkhdxy->nchdxy", scores.softmax(3), v)
        return self.out(att.reshape(n, c * self.hid, s, s))


class Translator(nn.Module):
    """``forward(code) -> code``: the latent transition, ``blocks`` residual blocks of
    cross-variable self-attention (at each latent position the C variables' ``hid``-vectors
    attend to each other: the paper's cross-variable attention, CIMidNet) followed by a
    3x3 convolution over all variables' channels (spatial and cross-variable mixing)."""

    def __init__(self, num_vars: int, hid: int, grid: int, blocks: int = 2, heads: int = 2):
        super().__init__()
        self.num_vars, self.hid, self.size = num_vars, hid, grid // 2
        c = num_vars
        self.attention = nn.ModuleList(CrossVariableAttention(c, hid, heads) for _ in range(blocks))
        self.mixing = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c * hid, c * hid, 3, 1, 1),
                nn.GELU(),
                nn.Conv2d(c * hid, c * hid, 3, 1, 1),
            )
            for _ in range(blocks)
        )

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        batch = code.shape[:-1]
        c, d, s = self.num_vars, self.hid, self.size
        h = code.reshape(-1, c * d, s, s)
        for attend, mix in zip(self.attention, self.mixing, strict=True):
            h = h + attend(h)
            h = h + mix(h)
        return h.reshape(*batch, -1)

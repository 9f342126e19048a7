"""Baselines for the state decoder phi: X -> [N], each fitted on the same training frames.

- :func:`contrastive_decoder`: the paper's temporal contrastive objective in plain torch
  (not probabilistic): a small encoder (linear, or an MLP with ``hidden`` units) with an
  N-way softmax head p(s | x), the pair score
  log(p(. | x_t)^T exp(W) p(. | x_{t+k})) with a learned N x N matrix W, and InfoNCE over
  (x_t, x_{t+k}) pairs against the other pairs of the minibatch; phi(x) = argmax p(s | x).
- :func:`kmeans_decoder`: k-means with N clusters on the raw pixels of single frames (the
  simplest strong baseline: no time at all).
- :func:`supervised_decoder`: multinomial logistic regression on labelled frames, a
  ceiling that shows the state is decodable from one frame (it sees the labels; no
  video-only method does).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from guides.encoders import mlp

__all__ = ["contrastive_decoder", "kmeans_decoder", "supervised_decoder"]


def _frames(x) -> np.ndarray:
    x = np.asarray(torch.as_tensor(x).cpu())
    return x.reshape(-1, x.shape[-1])


class _Contrastive(torch.nn.Module):
    def __init__(self, pixels: int, states: int, hidden: int | None):
        super().__init__()
        sizes = (pixels, states) if hidden is None else (pixels, hidden, states)
        self.encoder = mlp(sizes, torch.nn.ReLU)
        # a random start: at W = 0 every pair scores alike and the encoder gets no gradient
        self.log_kernel = torch.nn.Parameter(torch.randn(states, states))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).softmax(-1)

    def loss(self, now: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        scores = (self.probs(now) @ self.log_kernel.exp() @ self.probs(later).T).log()
        return F.cross_entropy(scores, torch.arange(len(now), device=now.device))


def contrastive_decoder(
    x_train,
    num_states: int,
    *,
    steps: int,
    lr: float = 1e-2,
    batch_size: int = 512,
    hidden: int | None = None,
    offset: int = 1,
    restarts: int = 1,
    seed: int = 0,
):
    """Fit the temporal contrastive decoder on episodes ``x_train`` (E, H, D) for ``steps``
    Adam steps of ``batch_size`` (x_t, x_{t+offset}) pairs, ``restarts`` times from seeded
    initialisations; keep the restart with the lowest InfoNCE loss over all training pairs
    (fixed batches). Returns ``(decode, losses)``: ``decode(x)`` maps frames (..., D) to
    states (...), ``losses`` the final training loss of each restart."""
    x = torch.as_tensor(x_train, dtype=torch.float32)
    now = x[:, :-offset].reshape(-1, x.shape[-1])
    later = x[:, offset:].reshape(-1, x.shape[-1])
    size = min(batch_size, len(now))
    best, losses = None, []
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(int(seed) * 1000 + restart)
        torch.manual_seed(int(seed) * 1000 + restart)
        net = _Contrastive(x.shape[-1], num_states, hidden)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            pick = torch.randperm(len(now), generator=generator)[:size]
            opt.zero_grad()
            net.loss(now[pick], later[pick]).backward()
            opt.step()
        with torch.no_grad():
            order = torch.randperm(len(now), generator=torch.Generator().manual_seed(0))
            chunks = [order[i : i + size] for i in range(0, len(now) - size + 1, size)]
            final = float(np.mean([float(net.loss(now[c], later[c])) for c in chunks]))
        losses.append(final)
        if best is None or final < min(losses[:-1]):
            best = net

    def decode(frames) -> np.ndarray:
        with torch.no_grad():
            frames = torch.as_tensor(frames, dtype=torch.float32)
            return best.probs(frames).argmax(-1).numpy()

    return decode, losses


def kmeans_decoder(x_train, num_states: int, *, restarts: int = 1, seed: int = 0):
    """k-means with ``num_states`` clusters on the training frames (sklearn, ``restarts``
    initialisations kept by inertia). Returns ``decode(x)`` as for the contrastive one."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(num_states, n_init=restarts, random_state=seed).fit(_frames(x_train))

    def decode(frames) -> np.ndarray:
        frames = np.asarray(torch.as_tensor(frames).cpu())
        return kmeans.predict(frames.reshape(-1, frames.shape[-1])).reshape(frames.shape[:-1])

    return decode


def supervised_decoder(x_train, states_train, *, seed: int = 0):
    """Multinomial logistic regression of the true state on one frame (uses the labels:
    a decodability ceiling, not a competitor)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300, C=1.0, random_state=seed)
    clf.fit(_frames(x_train), np.asarray(states_train).reshape(-1))

    def decode(frames) -> np.ndarray:
        frames = np.asarray(torch.as_tensor(frames).cpu())
        return clf.predict(frames.reshape(-1, frames.shape[-1])).reshape(frames.shape[:-1])

    return decode

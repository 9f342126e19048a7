"""Small supervised classifiers as judges and attack targets: an MLP trained by Adam on
(features, labels), and its accuracy. Used by the zoo's robustness and sample-quality checks
(an adversarial filter's downstream classifier, a judge of generated digits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp_classifier", "train_classifier", "fit_classifier", "accuracy", "predict"]


def mlp_classifier(
    input_dim: int, num_classes: int, hidden: Sequence[int] = (128,)
) -> nn.Sequential:
    """An MLP ``input_dim -> hidden... -> num_classes`` logits with ReLU activations."""
    if input_dim < 1 or num_classes < 2:
        raise ValueError(
            f"need input_dim >= 1 and num_classes >= 2, got {input_dim} and {num_classes}"
        )
    sizes = [input_dim, *hidden, num_classes]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (rows, features), got shape {tuple(x.shape)}")
    if y.shape != (len(x),):
        raise ValueError(f"y must be ({len(x)},) labels, got shape {tuple(y.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x has NaN or infinite values")
    if y.dtype.is_floating_point or (y < 0).any():
        raise ValueError("y must hold integer class labels >= 0")


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hidden: Sequence[int] = (128,),
    num_classes: int | None = None,
    steps: int = 1500,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Sequential:
    """An :func:`mlp_classifier` fitted to ``(x, y)`` by Adam on minibatches (seeded), in
    eval mode with its parameters frozen (``requires_grad=False``): attacks then take
    gradients with respect to inputs only."""
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y).long()
    _check(x, y)
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    classes = int(num_classes or int(y.max()) + 1)
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        net = mlp_classifier(x.shape[1], classes, hidden)
    return fit_classifier(
        net, x, y, steps=steps, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed
    )


def fit_classifier(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> nn.Module:
    """``net`` trained in place by ``steps`` Adam steps on the cross-entropy of seeded
    minibatches of ``(x, y)`` (its parameters unfrozen first, so a frozen classifier can be
    fine-tuned), then returned in eval mode with its parameters frozen."""
    for p in net.parameters():
        p.requires_grad_(True)
    generator = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(int(steps)):
        index = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        loss = nn.functional.cross_entropy(net(x[index]), y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def predict(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted labels (argmax of the logits)."""
    return classifier(torch.as_tensor(x, dtype=torch.float32)).argmax(-1)


def accuracy(classifier: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose predicted label equals ``y``."""
    y = torch.as_tensor(y).long()
    return float((predict(classifier, x) == y).float().mean())

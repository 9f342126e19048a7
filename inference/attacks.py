"""Adversarial attacks on any differentiable objective: inputs, hidden activations or latents.

- :func:`pgd`: projected gradient ascent of a per-example loss over an L-inf or L2 ball
  (Madry et al. 2018), keeping each example's strongest iterate;
- :func:`pgd_linf`: the usual input attack, an L-inf ball inside the valid pixel range;
- :func:`hidden_pgd`: a perturbation ``delta`` of hidden activations (targeted latent
  adversarial training perturbs a layer, not the input);
- :func:`straight_through`: BPDA (Athalye et al. 2018): a non-differentiable step (rounding,
  quantisation) run forward, a smooth stand-in (the identity by default) differentiated
  backward, so an attack sees through a gradient-masking filter;
- :func:`eot`: expectation over transformation: the loss of a randomised defence averaged
  over draws of its randomness;
- :func:`margin_loss`, :func:`robust_accuracy`: the objective and the figure to report.

Why by hand: torchattacks, foolbox and ART attack a classifier's *input* inside fixed pixel
bounds from its logits; the zoo attacks any per-example objective (a posterior-predictive
loss, a refusal log-probability, a hidden layer, a latent), which they do not take.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "pgd",
    "pgd_linf",
    "hidden_pgd",
    "straight_through",
    "eot",
    "margin_loss",
    "robust_accuracy",
]

Loss = Callable[[torch.Tensor], torch.Tensor]
NORMS = ("linf", "l2")


def _check(eps: float, steps: int, step_size: float | None, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")


def _per_example(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1) if values.dim() > 1 else values.unsqueeze(1)


def _unflatten(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(like.shape)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = _per_example(delta)
    scale = (eps / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return _unflatten(flat * scale, delta)


def _ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    flat = _per_example(grad)
    return _unflatten(flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12), grad)


def _random_start(like: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    noise = torch.rand(like.shape, generator=generator, dtype=like.dtype) * 2 - 1
    if norm == "l2":  # a point inside the ball, not only on it
        return _project(noise * eps, eps, norm) * torch.rand(
            (like.shape[0],) + (1,) * (like.dim() - 1), generator=generator, dtype=like.dtype
        )
    return noise * eps


def pgd(
    loss_fn: Loss,
    start: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 40,
    step_size: float | None = None,
    clamp: tuple[float, float] | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise ``loss_fn(start + delta)`` per example over ``||delta|| <= eps``.

    :param loss_fn: maps a batch (rows first, like ``start``) to one loss per row, shape (N,).
    :param step_size: default ``2.5 * eps / steps`` (Madry et al.), which can cross the ball.
    :param clamp: the valid range of ``start + delta`` (e.g. pixels in (0, 1)).
    :returns: the perturbed batch, each row at the iterate where its loss was highest.
    """
    _check(eps, steps, step_size, norm)
    if not torch.is_tensor(start) or not start.is_floating_point():
        raise TypeError(f"start must be a floating-point tensor, got {type(start).__name__}")
    if start.dim() == 0:
        raise ValueError("start must have a batch dimension (rows first)")
    start = start.detach()
    if eps == 0:
        return start.clone()
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    delta = _random_start(start, eps, norm, generator) if random_start else torch.zeros_like(start)

    def valid(delta: torch.Tensor) -> torch.Tensor:
        delta = _project(delta, eps, norm)
        if clamp is not None:
            delta = (start + delta).clamp(*clamp) - start
        return delta

    delta = valid(delta)
    best, best_loss = delta.clone(), torch.full((start.shape[0],), -torch.inf, dtype=start.dtype)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(start + delta)
            if loss.shape != (start.shape[0],):
                raise ValueError(
                    f"loss_fn must return one loss per row, shape ({start.shape[0]},), "
                    f"got {tuple(loss.shape)}"
                )
            (grad,) = torch.autograd.grad(loss.sum(), delta, allow_unused=True)
        with torch.no_grad():
            better = loss.detach() > best_loss
            best[better], best_loss[better] = delta.detach()[better], loss.detach()[better]
            if grad is None:  # the loss does not depend on the input: nothing to climb
                break
            delta = valid(delta.detach() + step_size * _ascent(grad, norm))
    return (start + best).detach()


def pgd_linf(
    loss_fn: Loss,
    x: torch.Tensor,
    eps: float,
    *,
    steps: int = 40,
    step_size: float | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The input attack: :func:`pgd` in an L-inf ball of radius ``eps`` inside ``clamp``."""
    return pgd(
        loss_fn,
        x,
        eps,
        norm="linf",
        steps=steps,
        step_size=step_size,
        clamp=clamp,
        random_start=random_start,
        generator=generator,
    )


def hidden_pgd(
    loss_fn: Loss,
    like: torch.Tensor,
    eps: float,
    *,
    norm: str = "l2",
    steps: int = 16,
    step_size: float | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A perturbation ``delta`` (shaped ``like``, rows first) of hidden activations that
    maximises ``loss_fn(delta)`` per row within ``||delta|| <= eps``: pass a ``loss_fn`` that
    adds ``delta`` to the layer it attacks. Returns ``delta``, not the perturbed activation."""
    return pgd(
        loss_fn,
        torch.zeros_like(like.detach()),
        eps,
        norm=norm,
        steps=steps,
        step_size=step_size,
        clamp=None,
        random_start=random_start,
        generator=generator,
    )


def straight_through(
    hard_fn: Callable[[torch.Tensor], torch.Tensor],
    soft_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """BPDA: ``hard_fn`` forward, the gradient of ``soft_fn`` (default: the identity)
    backward. The returned function's value equals ``hard_fn(x)`` exactly."""

    def through(x: torch.Tensor) -> torch.Tensor:
        soft = x if soft_fn is None else soft_fn(x)
        hard = hard_fn(x)
        if hard.shape != soft.shape:
            raise ValueError(
                f"hard_fn and soft_fn must agree in shape, got {tuple(hard.shape)} "
                f"and {tuple(soft.shape)}"
            )
        return soft + (hard - soft).detach()

    return through


def eot(loss_fn: Loss, samples: int) -> Loss:
    """Expectation over transformation: ``loss_fn`` averaged over ``samples`` calls, each
    drawing the defence's randomness afresh (its gradient is the average gradient)."""
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")

    def expected(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([loss_fn(x) for _ in range(samples)]).mean(0)

    return expected


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin per row: the best wrong logit minus the true one; positive
    exactly when the row is misclassified. Logits may be log-probabilities."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be (rows, classes) and labels (rows,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    true = logits.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, labels.long().unsqueeze(1), -torch.inf)
    return others.max(1).values - true


def robust_accuracy(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Accuracy of ``predict`` (inputs -> class indices) on clean ``x`` and on
    ``attack(x, labels)``, and the attack's success rate among the rows clean ``x`` got right.
    """
    with torch.no_grad():
        clean = predict(x) == labels
    adversarial = attack(x, labels)
    if adversarial.shape != x.shape:
        raise ValueError(
            f"attack returned shape {tuple(adversarial.shape)}, not the input's {tuple(x.shape)}"
        )
    with torch.no_grad():
        robust = predict(adversarial) == labels
    correct = clean.sum().clamp_min(1)
    return {
        "clean_accuracy": float(clean.float().mean()),
        "robust_accuracy": float(robust.float().mean()),
        "attack_success": float((clean & ~robust).sum() / correct),
    }

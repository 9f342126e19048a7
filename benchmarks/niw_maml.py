"""NIW-Meta's closed-form local step against second-order MAML as inner steps grow.

Both train the same network (the linear head on ``niw_meta``'s features) on SineLine
episodes. Per episode: wall time of one outer training step and the memory the autograd
graph holds for the backward pass (bytes of tensors saved for backward, counted with
``torch.autograd.graph.saved_tensors_hooks``), each as a ratio to NIW-Meta measured in the
same run. NIW-Meta has no inner loop, so its row is the same for every ``inner steps``.

Run alone with ``python -m benchmarks.niw_maml [--quick]``.
"""

from __future__ import annotations

import time

import torch
from pyro.infer import Trace_ELBO

import zoo
from inference.data import Batch
from zoo.models.niw_meta.regression import maml_query_loss


def _saved_bytes(fn) -> int:
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return total


def _timed(fn, repeats: int) -> float:
    fn().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn().backward()
    return (time.perf_counter() - start) / repeats


def run(quick: bool = False) -> dict:
    torch.manual_seed(0)
    batch_size, repeats = 64, (5 if quick else 30)
    model = zoo.create("niw_meta", num_tasks=batch_size)
    data = model.default_data()
    batch = Batch(data, index=torch.arange(batch_size), size=batch_size)
    guide = model.guide
    elbo = Trace_ELBO()

    def niw_step():
        return elbo.differentiable_loss(model, guide, batch)

    init = torch.zeros(model.dim, requires_grad=True)
    lr = torch.tensor(0.05)
    phi_s, phi_q = model.features(data["x_support"]), model.features(data["x_query"])

    def maml_step(k):
        return lambda: maml_query_loss(
            init, lr, phi_s, data["y_support"], phi_q, data["y_query"], k
        )

    niw_time = _timed(niw_step, repeats) / batch_size
    niw_mem = _saved_bytes(niw_step) / batch_size
    rows = [
        {
            "method": "NIW-Meta closed form",
            "inner steps": "-",
            "ms/episode": round(1e3 * niw_time, 4),
            "graph KiB/episode": round(niw_mem / 1024, 2),
            "time ratio to NIW": 1.0,
            "memory ratio to NIW": 1.0,
        }
    ]
    for k in (1, 5, 10, 20) if not quick else (1, 5):
        t = _timed(maml_step(k), repeats) / batch_size
        m = _saved_bytes(maml_step(k)) / batch_size
        rows.append(
            {
                "method": "MAML (second order)",
                "inner steps": k,
                "ms/episode": round(1e3 * t, 4),
                "graph KiB/episode": round(m / 1024, 2),
                "time ratio to NIW": round(t / niw_time, 3),
                "memory ratio to NIW": round(m / niw_mem, 3),
            }
        )
    return {
        "title": "NIW-Meta local step vs second-order MAML (SineLine, 64 episodes a step)",
        "rows": rows,
        "notes": "Memory is what the autograd graph saves for backward (the part MAML grows "
        "with inner steps); NIW-Meta's step includes Pyro's tracing of the global sites.",
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)

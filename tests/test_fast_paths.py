"""The engine picks its fast paths itself: JIT for static models, fused Adam."""

import pytest
import torch

import zoo
from inference.data import Minibatches
from inference.elbos import PairLoss, make_elbo, resolve_elbo
from inference.svi import _optimizer, fit


def test_auto_elbo_compiles_static_models_only():
    assert resolve_elbo("auto", zoo.create("vae_digits")) == "jit"
    assert resolve_elbo("auto", zoo.create("eight_schools")) == "jit"

    class Dynamic(torch.nn.Module):
        pass

    assert resolve_elbo("auto", Dynamic()) == "trace"
    assert resolve_elbo("meanfield", zoo.create("vae_digits")) == "meanfield"
    with pytest.raises(ValueError, match="unknown elbo 'fast'"):
        resolve_elbo("fast", Dynamic())


def test_auto_and_explicit_jit_give_the_same_losses():
    def run(elbo):
        torch.manual_seed(0)
        model = zoo.create("vae_digits", hidden=(32,))
        data = model.default_data()
        return fit(
            model,
            model.guide,
            data,
            steps=30,
            batch_size=64,
            lr=1e-3,
            elbo=elbo,
            seed=3,
            progress=False,
        ).losses

    assert run("auto") == run("jit_meanfield")


@pytest.mark.parametrize("elbo", ["jit", "jit_meanfield"])
def test_compiled_loss_equals_the_eager_loss_for_each_traced_estimator(elbo):
    eager_name = {"jit": "trace", "jit_meanfield": "meanfield"}[elbo]
    model = zoo.create("vae_digits", hidden=(32,))
    data = model.default_data()
    batch = Minibatches(data, 64, seed=0).__next__()
    eager = PairLoss(model, model.guide, eager_name, make_elbo(eager_name), ["x"], batch.size)
    compiled = PairLoss(model, model.guide, elbo, make_elbo(elbo), ["x"], batch.size)
    eager.initialize(batch)
    compiled.initialize(batch, jit=True)
    torch.manual_seed(1)
    first = compiled.step_loss(batch)
    compiled_grad = model.decoder[0].weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(1)
    second = eager.step_loss(batch)
    assert torch.allclose(first, second, rtol=1e-5)
    assert torch.allclose(compiled_grad, model.decoder[0].weight.grad, rtol=1e-4, atol=1e-3)
    # the traced loss follows the parameters (Pyro's own meanfield loss froze a constant)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.manual_seed(2)
    moved = compiled.step_loss(batch)
    torch.manual_seed(2)
    assert torch.allclose(moved, eager.step_loss(batch), rtol=1e-5)
    assert not torch.allclose(moved, first, rtol=1e-3)


def test_adam_uses_the_fused_kernel_on_cpu():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert _optimizer("adam", params, 1e-3, None, 0.0).defaults["fused"] is True
    assert _optimizer("adamw", params, 1e-3, None, 0.0).defaults["fused"] is True

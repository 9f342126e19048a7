"""LatentSeek (paper 10): the test-time objective is the ELBO's score-function surrogate
(TraceGraph_ELBO's but for a zero-mean term), the search leaves the network frozen, the
checker-guided search lifts a weak base model over seeds (and needs the latent to move to do
it), and the model's bad inputs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

import guides
import zoo
from inference.data import DataError
from inference.svi import fit
from zoo.models.latentseek import (
    EOS,
    PAD,
    VOCAB,
    answers_of,
    arithmetic_pairs,
    decode_string,
    encode_strings,
    with_answer,
)

TINY = dict(zoo.get("latentseek").tiny)
_TRAINED = {}


def tiny(**overrides):
    return zoo.create("latentseek", **{**TINY, **overrides})


def trained(seed: int):
    """A weak base model (800 steps: about 20% held-out exact match) and 300 held-out
    prompts, cached per seed."""
    if seed not in _TRAINED:
        torch.manual_seed(seed)
        model = zoo.create("latentseek", steps=800, lr=1e-2)
        train, test = model.split(model.default_data(seed), seed)
        guide = guides.build("default", model)
        fit(model, guide, train, config=model.config, progress=False, seed=seed)
        model.use_guide(guide, train)
        model.fit_verifier(train, steps=500, seed=seed)
        _TRAINED[seed] = (model, train, test["tokens"][:300])
    return _TRAINED[seed]


def test_strings_answers_and_the_held_out_split_are_what_they_say():
    tokens = encode_strings([(7, 95), (0, 0)])
    assert decode_string(tokens[0]) == "7+95=102$" and decode_string(tokens[1]) == "0+0=0$"
    assert answers_of(tokens).tolist()[0] == [VOCAB.index(c) for c in "102$"]
    assert answers_of(tokens).tolist()[1] == [VOCAB.index("0"), EOS, PAD, PAD]
    swapped = with_answer(tokens, answers_of(encode_strings([(1, 2), (50, 50)])))
    assert decode_string(swapped[0]) == "7+95=3$" and decode_string(swapped[1]) == "0+0=100$"
    pairs = arithmetic_pairs(3)
    assert len({tuple(p) for p in pairs}) == 10_000  # every pair once: splits are disjoint


def test_the_seek_objective_is_tracegraph_elbos_estimator_less_a_zero_mean_term():
    # k = 1, tokens sampled. TraceGraph_ELBO's single-sample gradient in mu is
    # (R/temp) d log q(x) + d log p(z) + d log p(x | z) (its entropy term for x is dropped);
    # the seek objective leaves out the last, whose expectation under q is zero, so its
    # gradient is the paper's R d log softmax plus the proximity pull. (A guide sd of 0.05:
    # at 1e-3 TraceGraph's d log q(z)/d mu, 0 in exact arithmetic, is float noise.)
    model = tiny(
        seek_tokens=1, seek_tokens_from="sample", reward_temp=0.5, proximity=0.7, guide_sd=0.05
    )
    tokens = model.default_data(0)["tokens"][:16]
    _, states, h = model.greedy(tokens)
    z0 = states[:, :1]
    reward = model.checker(tokens)
    mu = (z0 + 0.3 * torch.randn_like(z0)).requires_grad_(True)
    pyro.set_rng_seed(5)
    (ours,) = torch.autograd.grad(model.seek_surrogate(h, z0, reward, mu).sum(), mu)
    pyro.set_rng_seed(5)
    trace = poutine.trace(model.seek_guide).get_trace(h, mu)
    z = mu + (trace.nodes["z"]["value"] - mu).detach()
    logits = model.lm.head(z) + model.bias_value
    log_px = dist.Categorical(logits=logits).log_prob(trace.nodes["x"]["value"]).sum()
    (pathwise,) = torch.autograd.grad(log_px, mu)
    mu2 = mu.detach().clone().requires_grad_(True)
    pyro.set_rng_seed(5)
    TraceGraph_ELBO(max_plate_nesting=1).loss_and_grads(
        lambda: model.seek_model(h, z0, reward), lambda: model.seek_guide(h, mu2)
    )  # backward of its surrogate loss: mu2.grad = -(its ELBO gradient)
    assert torch.allclose(ours, -mu2.grad - pathwise, rtol=1e-4, atol=1e-4)
    # the reward enters it: with a zero reward only the proximity pull is left
    pyro.set_rng_seed(5)
    zero = lambda answer: torch.zeros(len(answer))  # noqa: E731
    (pull,) = torch.autograd.grad(model.seek_surrogate(h, z0, zero, mu).sum(), mu)
    assert torch.allclose(pull, -(z.detach() - z0) / 0.7**2, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, pull, atol=1e-2)


def test_seek_never_trains_the_network_and_keeps_right_answers():
    model, _, tokens = trained(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base, _, _ = model.greedy(tokens)
    out = model.seek(tokens)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    right = (base == answers_of(tokens)).all(-1)
    assert (out["stopped_at"][right] == 0).all()
    assert torch.equal(out["answers"][right], base[right])
    assert out["history"].shape == (model.config.seek_steps + 1, len(tokens))
    assert torch.equal(out["history"][0], right)


@pytest.mark.parametrize("seed", [0, 1])
def test_checker_guided_search_lifts_a_weak_model_and_the_self_reward_less(seed):
    model, _, tokens = trained(seed)
    base = model.exact_match(tokens, model.greedy(tokens)[0])
    checker = model.exact_match(tokens, model.seek(tokens, "checker")["answers"])
    self_reward = model.exact_match(tokens, model.seek(tokens, "self", stop=-0.5)["answers"])
    assert 0.05 < base < 0.45
    assert checker - base > 0.25, (base, checker)
    assert self_reward - base < checker - base
    # the gain is the search's, not the stop rule's: a latent that barely moves gains nothing
    still = model.exact_match(tokens, model.seek(tokens, "checker", lr=1e-6)["answers"])
    assert still - base < 0.03


def test_bad_strings_configs_and_rewards_are_refused():
    model = tiny()
    tokens = encode_strings([(12, 34), (5, 6)])
    with pytest.raises(DataError, match="'tokens' row 1 .*one '\\+'"):
        bad = tokens.clone()
        bad[1, 2] = VOCAB.index("+")  # "5++=11$"
        model.validate({"tokens": bad})
    with pytest.raises(DataError, match="'tokens' row 0 must be padded"):
        bad = tokens.clone()
        bad[0, -1] = VOCAB.index("3")  # a digit after the end token
        model.validate({"tokens": bad})
    with pytest.raises(DataError, match="'tokens'"):
        model.validate({"tokens": tokens.float() + 0.5})
    for key, value in (
        ("seek_tokens", 5),
        ("seek_tokens_from", "beam"),
        ("stop_reward", 0.5),
        ("proximity", 0.0),
        ("num_strings", 20_000),
    ):
        with pytest.raises(zoo.ConfigError, match=key):
            tiny(**{key: value})
    with pytest.raises(ValueError, match="reward must be one of"):
        model.seek(tokens, "oracle")

"""Met2Net (paper 15): the two stages train only their parts, the EMA is the paper's, the
per-variable networks keep the variables apart, the data are advected, and a short
decoupled fit forecasts the advected temperature better than persistence."""

import pytest
import torch

import guides
import zoo
from inference.data import DataError
from inference.svi import fit
from zoo.models.met2net.baselines import LocalLinear, persistence
from zoo.models.met2net.data import advect, coupled_fields
from zoo.models.met2net.model import per_variable_mse

TINY = {**zoo.get("met2net").tiny}


def _model(**overrides):
    return zoo.create("met2net", **{**TINY, **overrides})


def _snapshot(module, prefix):
    return {n: p.detach().clone() for n, p in module.named_parameters() if n.startswith(prefix)}


def test_each_stage_trains_only_its_parts_and_the_ema_is_the_papers():
    torch.manual_seed(0)
    model = _model(momentum=0.9)
    data = model.default_data(0)
    guide = guides.build("default", model)
    trans0 = _snapshot(model, "trans")
    codec0 = {**_snapshot(model, "encoder"), **_snapshot(model, "decoder")}
    seen = []

    def record(stage):
        seen.append((stage, _snapshot(model, "trans"), _snapshot(model, "encoder")))

    original = model.update_ema
    model.update_ema = lambda m=None: (record("ema"), original(m))[1]
    model.fit_decoupled(guide, data, steps=6, rounds=1, batch_size=16, lr=1e-2)
    trans1 = _snapshot(model, "trans")
    codec1 = {**_snapshot(model, "encoder"), **_snapshot(model, "decoder")}
    assert all(not torch.equal(codec0[n], codec1[n]) for n in codec0 if n.endswith("weight"))
    assert any(not torch.equal(trans0[n], trans1[n]) for n in trans0)
    # the EMA update after the round: Trans_k = 0.9 Trans_k(start = Trans) + 0.1 Trans
    for name, value in model.trans.named_parameters():
        ema = getattr(model, "trans_ema__" + name.replace(".", "__"))
        expected = 0.9 * trans0["trans." + name] + 0.1 * value.detach()
        assert torch.allclose(ema, expected, atol=1e-6), name
    # stage I alone leaves the translator and its scale bit-identical
    model.stage = "autoencoder"
    fit(model, guide, data, steps=3, batch_size=16, lr=1e-2, progress=False,
        trainable=lambda n: not n.startswith("model.trans"))  # fmt: skip
    assert all(torch.equal(v, _snapshot(model, "trans")[n]) for n, v in trans1.items())
    # stage II alone leaves the encoders and decoders bit-identical
    model.stage = "transition"
    codec = {**_snapshot(model, "encoder"), **_snapshot(model, "decoder")}
    fit(model, guide, data, steps=3, batch_size=16, lr=1e-2, progress=False,
        trainable=["model.trans"])  # fmt: skip
    after = {**_snapshot(model, "encoder"), **_snapshot(model, "decoder")}
    assert all(torch.equal(codec[n], after[n]) for n in codec)
    model.stage = "joint"


@pytest.mark.parametrize("per_variable", [True, False])
def test_per_variable_encoders_keep_the_variables_apart(per_variable):
    torch.manual_seed(0)
    model = _model(per_variable=per_variable)
    past = torch.randn(2, 6, 3, 16, 16)
    bumped = past.clone()
    bumped[:, :, 0] += 1.0  # change the temperature only
    with torch.no_grad():
        before, after = model.encoder(past)[0], model.encoder(bumped)[0]
    moved = (after - before).abs().reshape(2, 3, -1).amax((0, 2))  # per variable's code
    assert moved[0] > 1e-3
    if per_variable:
        assert torch.all(moved[1:] == 0), "a per-variable code saw another variable"
    else:
        assert torch.all(moved[1:] > 1e-3), "the channel-mixed encoder should mix"


def test_temperature_is_advected_by_the_wind():
    frames = coupled_fields(20, noise=0.0, diffusion=0.0, seed=3).double()
    temp, u, v = frames[:, :-1, 0], frames[:, :-1, 1], frames[:, :-1, 2]
    moved = advect(temp.reshape(-1, 16, 16), u.reshape(-1, 16, 16), v.reshape(-1, 16, 16))
    nxt = frames[:, 1:, 0].reshape(-1, 16, 16)
    # advection explains the next frame (up to the slow change of the wind within a
    # frame) far better than persistence does
    err_adv = (moved - nxt).square().mean()
    err_still = (temp.reshape(-1, 16, 16) - nxt).square().mean()
    assert err_adv < 0.05 * err_still


def test_stage_two_learns_the_code_transition_better_than_persistence_in_code_space():
    """Stage II alone (fixed random encoders): the translator's prediction of the future
    window's code must beat repeating the past window's code on held-out sequences."""
    torch.manual_seed(0)
    model = _model(num_sequences=160)
    data = model.default_data(4)
    train, test = model.split(data, 0)
    guide = guides.build("default", model)
    model.stage = "transition"
    fit(model, guide, train, steps=150, batch_size=32, lr=5e-3, progress=False,
        trainable=["model.trans"])  # fmt: skip
    model.stage = "joint"
    with torch.no_grad():
        past, future = model.windows(test["frames"])
        code_past, code_next = model.encoder(past)[0], model.encoder(future)[0]
        learned = (model.trans(code_past) - code_next).square().mean()
        still = (code_past - code_next).square().mean()
    assert learned < 0.7 * still, (float(learned), float(still))


def test_baselines_on_known_data():
    frames = coupled_fields(60, seed=2)
    past, future = frames[:, :6], frames[:, 6:]
    still = per_variable_mse(persistence(past[40:], 6), future[40:], prefix="p")
    linear = LocalLinear(max_pixels=4000).fit(past[:40], future[:40])
    fitted = per_variable_mse(linear.predict(past[40:]), future[40:], prefix="l")
    assert fitted["l_temperature"] < still["p_temperature"]


def test_bad_inputs_give_clear_errors():
    model = _model()
    with pytest.raises(DataError, match="frames"):
        model.validate({"frames": torch.zeros(4, 10, 3, 16, 16)})  # 10 frames, not 6 + 6
    with pytest.raises(zoo.ConfigError, match="heads"):
        zoo.create("met2net", hid=8, heads=3)
    with pytest.raises(zoo.ConfigError, match="momentum"):
        zoo.create("met2net", momentum=1.0)
    data = model.default_data(0)
    with pytest.raises(zoo.ConfigError, match="rounds"):
        model.fit_decoupled(model.guide, data, steps=3, rounds=5)

"""The SVI engine's options: ELBOs, particles, optimizers and schedules, clipping, early
stopping, seeds, the NaN guard, option checks, checkpoints and exact resume."""

import math
import pickle
from pathlib import Path

import pyro
import pytest
import torch

import zoo
from inference import svi
from inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from inference.elbos import ELBOS
from inference.svi import OPTIMIZERS, SCHEDULES, TrainingDiverged, fit, restore
from zoo.models.vae_digits import VAEDigits

MULTI_PARTICLE = {"renyi", "iwae"}


def _schools():
    model = zoo.create("eight_schools")
    return model, model.guide, model.default_data()


@pytest.fixture(scope="module")
def digits():
    return {"x": zoo.create("vae_digits").default_data()["x"][:256]}


def _vae(init_seed=0):
    # the networks are initialised when the model is built, before fit's seed applies
    pyro.set_rng_seed(init_seed)
    model = zoo.create("vae_digits", latent_dim=2, hidden=(32,))
    return model, model.guide


def _mean(values):
    return sum(values) / len(values)


def _params(result):
    return {k: v.detach().clone() for k, v in result.loss_fn.state_dict().items()}


def test_an_analytic_elbo_is_refused_for_an_autoguide_with_nothing_analytic():
    # eight schools' AutoNormal gives every site as a point with a Jacobian: no closed form
    model, guide, data = _schools()
    for elbo in ("meanfield", "jit_meanfield"):
        with pytest.raises(ValueError, match=f"elbo '{elbo}' needs a closed-form KL .* tau"):
            fit(model, guide, data, steps=5, elbo=elbo, progress=False)


@pytest.mark.parametrize("elbo", sorted(set(ELBOS) - {"meanfield", "jit_meanfield"}))
def test_each_elbo_trains_eight_schools(elbo):
    model, guide, data = _schools()
    particles = 4 if elbo in MULTI_PARTICLE else 1
    result = fit(
        model, guide, data, steps=200, lr=0.05, elbo=elbo, num_particles=particles, progress=False
    )
    assert len(result.losses) == 200
    assert all(math.isfinite(v) for v in result.losses)
    # measured: ~54 over the first 20 steps, ~32 over the last 50 (all ELBOs)
    assert _mean(result.losses[-50:]) < _mean(result.losses[:20]) - 10


@pytest.mark.parametrize("elbo", sorted(ELBOS))
def test_each_elbo_trains_vae_digits(elbo, digits):
    model, guide = _vae()
    particles = 2 if elbo in MULTI_PARTICLE else 1
    result = fit(
        model,
        guide,
        digits,
        steps=60,
        batch_size=128,
        lr=1e-2,
        elbo=elbo,
        num_particles=particles,
        progress=False,
    )
    assert all(math.isfinite(v) for v in result.losses)
    # measured: ~17,300 over the first 10 steps, ~11,500 over the last 10
    assert _mean(result.losses[-10:]) < 0.85 * _mean(result.losses[:10])


@pytest.mark.parametrize("vectorize", [True, False])
def test_particles(vectorize, digits):
    model, guide, data = _schools()
    one = fit(model, guide, data, steps=30, lr=0.05, progress=False).losses
    model, guide, data = _schools()
    four = fit(
        model,
        guide,
        data,
        steps=30,
        lr=0.05,
        num_particles=4,
        vectorize_particles=vectorize,
        progress=False,
    ).losses
    assert all(math.isfinite(v) for v in four)
    assert four != one
    model, guide = _vae()
    result = fit(
        model,
        guide,
        digits,
        steps=10,
        batch_size=64,
        num_particles=4,
        vectorize_particles=vectorize,
        progress=False,
    )
    assert all(math.isfinite(v) for v in result.losses)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_optimizers_and_schedules(optimizer, schedule):
    model, guide, data = _schools()
    lr, factor, steps = 0.05, 0.1, 30
    result = fit(
        model,
        guide,
        data,
        steps=steps,
        lr=lr,
        optimizer=optimizer,
        lr_schedule=schedule,
        lr_final_factor=factor,
        progress=False,
    )
    assert all(math.isfinite(v) for v in result.losses)
    assert len(result.lrs) == steps
    assert result.lrs[0] == pytest.approx(lr)
    final = lr if schedule == "constant" else lr * factor
    assert result.lrs[-1] == pytest.approx(final, rel=1e-6)
    assert all(a >= b - 1e-12 for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    assert _mean(result.losses[-5:]) < _mean(result.losses[:5])


def test_clip_norm_clips_every_step(monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        params = list(params)
        total = real(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        calls.append((max_norm, float(total), float(after)))
        return total

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    model, guide, data = _schools()
    clipped = fit(model, guide, data, steps=20, lr=0.05, clip_norm=0.5, progress=False)
    assert len(calls) == 20
    assert all(max_norm == 0.5 for max_norm, _, _ in calls)
    assert any(total > 0.5 for _, total, _ in calls), "the test must exercise clipping"
    assert all(after <= 0.5 * (1 + 1e-4) for _, _, after in calls)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real)
    model, guide, data = _schools()
    plain = fit(model, guide, data, steps=20, lr=0.05, progress=False)
    assert clipped.losses != plain.losses
    # clipped_adam clips per parameter itself
    model, guide, data = _schools()
    result = fit(
        model, guide, data, steps=20, optimizer="clipped_adam", clip_norm=0.5, progress=False
    )
    assert all(math.isfinite(v) for v in result.losses)


def test_early_stopping_on_converged_problem():
    model, guide, data = _schools()
    result = fit(model, guide, data, steps=5000, lr=0.05, patience=20, progress=False)
    # measured: stops after ~100 steps (one step per epoch on 8 schools) at a loss of ~32
    assert result.stopped == "early_stopping"
    assert result.steps < 1000
    assert len(result.losses) == result.steps
    assert result.final_loss < _mean(result.losses[:10]) - 10
    model, guide, data = _schools()
    result = fit(model, guide, data, steps=50, lr=0.05, progress=False)
    assert result.stopped == "steps" and result.steps == 50


def test_seeds(digits):
    runs = {}
    for key, seed in (("a", 3), ("b", 3), ("c", 4)):
        model, guide = _vae()
        runs[key] = fit(
            model, guide, digits, steps=15, batch_size=64, seed=seed, progress=False
        ).losses
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_absurd_lr_diverges_with_clear_message(digits):
    pyro.set_rng_seed(0)
    model = zoo.create("vae_digits")  # the default 64-256-256-10 network
    guide = model.guide
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf|-inf) at step \d+"):
        fit(model, guide, digits, steps=100, batch_size=64, lr=1e6, progress=False, validate=False)
    for name, value in list(model.state_dict().items()) + list(guide.state_dict().items()):
        assert torch.isfinite(value).all(), name


class _Breakable(VAEDigits):
    """vae_digits whose joint density becomes NaN once ``broken`` is set."""

    # a Python flag changes the model between steps: not static, so no traced loss
    static_structure = False
    broken = False

    def model(self, batch):
        super().model(batch)
        if self.broken:
            pyro.factor("boom", torch.tensor(float("nan")))


def _breakable():
    pyro.set_rng_seed(0)
    model = _Breakable(latent_dim=2, hidden=(32,))
    return model, model.guide


def test_nan_guard_restores_last_finite_state(digits):
    model, guide = _breakable()

    def break_at_20(step, loss):
        if step == 20:
            model.broken = True

    opts = dict(steps=100, batch_size=64, lr=1e-2, log_every=10, progress=False, validate=False)
    with pytest.raises(TrainingDiverged) as info:
        fit(model, guide, digits, callback=break_at_20, **opts)
    message = str(info.value)
    # NaN from step 21 on, seen at the check after step 30, state of step 20 restored
    assert "loss became nan at step 21" in message
    assert "restored to step 20" in message
    # the parameters are those of a clean 20-step run with the same seeds
    reference, reference_guide = _breakable()
    expected = fit(reference, reference_guide, digits, **dict(opts, steps=20)).loss_fn
    got = {f"pair.model.fn.{k}": v for k, v in model.state_dict().items()}
    got.update({f"pair.guide.fn.{k}": v for k, v in guide.state_dict().items()})
    assert expected.state_dict() and set(expected.state_dict()) <= set(got)
    for name, value in expected.state_dict().items():
        assert torch.isfinite(got[name]).all(), name
        assert torch.equal(got[name], value), name


@pytest.mark.parametrize(
    "options, name",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10, "lr": -1.0}, "lr"),
        ({"steps": 10, "elbo": "nonsense"}, "elbo"),
        ({"steps": 10, "optimizer": "sgd9000"}, "optimizer"),
        ({"steps": 10, "lr_schedule": "zigzag"}, "lr_schedule"),
        ({"steps": 10, "elbo": "renyi", "num_particles": 1}, "num_particles"),
        ({"steps": 10, "clip_norm": 0.0}, "clip_norm"),
        ({}, "steps or epochs"),
    ],
)
def test_bad_options_are_refused(options, name):
    model, guide, data = _schools()
    with pytest.raises(ValueError, match=name):
        fit(model, guide, data, progress=False, **options)


# ----- checkpoints -------------------------------------------------------------------------


def _setup(kind, digits):
    if kind == "eight_schools":
        model, guide, data = _schools()
        return model, guide, data, {"lr": 0.05}
    model, guide = _vae()
    return model, guide, digits, {"batch_size": 64, "lr": 1e-2}


@pytest.mark.parametrize("kind", ["eight_schools", "vae_digits"])
def test_exact_resume(kind, digits, tmp_path):
    model, guide, data, opts = _setup(kind, digits)
    whole = fit(
        model,
        guide,
        data,
        steps=40,
        checkpoint=tmp_path / "whole.pt",
        checkpoint_every=10,
        progress=False,
        **opts,
    )
    model, guide, data, opts = _setup(kind, digits)
    ckpt = tmp_path / "part.pt"
    first = fit(
        model, guide, data, steps=20, checkpoint=ckpt, checkpoint_every=10, progress=False, **opts
    )
    assert first.losses == whole.losses[:20]
    model, guide, data, opts = _setup(kind, digits)  # fresh objects, as after a restart
    resumed = fit(
        model,
        guide,
        data,
        steps=40,
        checkpoint=ckpt,
        checkpoint_every=10,
        resume=True,
        progress=False,
        **opts,
    )
    assert resumed.steps == 40
    assert resumed.losses == whole.losses
    for name, value in whole.loss_fn.state_dict().items():
        assert torch.equal(resumed.loss_fn.state_dict()[name], value), name


def test_checkpoint_written_before_numpy_rng_state_still_resumes(tmp_path):
    """Checkpoints from before the RNG state came from ``pyro.util.get_rng_state`` hold
    ``{"torch", "python"}`` only: they resume exactly; new ones also hold numpy's state."""
    model, guide, data = _schools()
    whole = fit(model, guide, data, steps=40, lr=0.05, progress=False)
    model, guide, data = _schools()
    ckpt = tmp_path / "old.pt"
    fit(model, guide, data, steps=20, lr=0.05, checkpoint=ckpt, progress=False)
    state, meta = load_checkpoint(ckpt)
    assert set(state["rng"]) >= {"torch", "random", "numpy"}
    rng = state["rng"]
    state["rng"] = {"torch": rng["torch"], "python": rng["random"]}  # the old layout
    save_checkpoint(ckpt, state, meta)
    model, guide, data = _schools()
    resumed = fit(
        model, guide, data, steps=40, lr=0.05, checkpoint=ckpt, resume=True, progress=False
    )
    assert resumed.losses == whole.losses


@pytest.mark.parametrize("kind", ["eight_schools", "vae_digits"])
def test_restore_gives_same_evaluation(kind, digits, tmp_path):
    model, guide, data, opts = _setup(kind, digits)
    fit(model, guide, data, steps=30, checkpoint=tmp_path / "c.pt", progress=False, **opts)
    pyro.set_rng_seed(1)
    before = model.evaluate(guide, data)
    fresh_model, fresh_guide, _, _ = _setup(kind, digits)
    pyro.set_rng_seed(1)
    untrained = fresh_model.evaluate(fresh_guide, data)
    meta = restore(fresh_model, fresh_guide, data, tmp_path / "c.pt")
    assert meta["step"] == 30
    pyro.set_rng_seed(1)
    after = fresh_model.evaluate(fresh_guide, data)
    assert after == pytest.approx(before, rel=1e-6)
    assert untrained != pytest.approx(before, rel=1e-3)


class _Touch:
    """Unpickling this would create a file: the loader must never do it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_load_checkpoint_refuses_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    corrupt.write_bytes(noise.numpy().tobytes())  # seeded: the test's bytes never vary
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)

    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(CheckpointError, match="not a latent-zoo checkpoint"):
        load_checkpoint(foreign)

    marker = tmp_path / "code-ran"
    with_code = tmp_path / "code.pt"
    torch.save({"format": "latent-zoo/checkpoint", "payload": _Touch(marker)}, with_code)
    with pytest.raises(CheckpointError, match="execute"):
        load_checkpoint(with_code)
    raw_pickle = tmp_path / "raw.pkl"
    raw_pickle.write_bytes(pickle.dumps(_Touch(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw_pickle)
    assert not marker.exists(), "loading a checkpoint ran code"

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_module_is_used_by_fit():
    # fit reads checkpoints through the safe loader (not a bare torch.load)
    assert svi.load_checkpoint is load_checkpoint

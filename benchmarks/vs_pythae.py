"""vae_digits through the zoo engine against pythae's ``VAE``: held-out ELBO at equal epochs
and at equal wall time.

pythae is the library a user would otherwise pick for this model. Both train the same
networks (encoder 64-256-256-2x10, decoder 10-256-256-64, softplus; pythae's encoder emits a
log-variance, as its ``VAE`` requires), on the same 85/15 split of binarized ``load_digits``,
batch 128, Adam at lr 1e-3, one CPU thread; pythae through its own ``BaseTrainer`` (no
evaluation set, so no per-epoch evaluation), the zoo through ``inference.svi.fit`` with
``elbo="auto"`` (the analytic KL it now picks) and with ``elbo="jit"`` (the sampled KL,
the default before). Every model is scored by one evaluator (``benchmarks.vae_step``):
the 10-sample held-out ELBO per image. Wall time runs from the call that starts training
(set-up and JIT tracing included) to the end of each epoch.

Run alone with ``python -m benchmarks.vs_pythae [--quick]``.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import statistics
import tempfile
import time

import torch
from torch import nn

from benchmarks.vae_step import BATCH, HIDDEN, LATENT, LR, _mlp, _split, _zoo_model, heldout_elbo
from inference.svi import fit


def available() -> bool:
    return importlib.util.find_spec("pythae") is not None


def _pythae_vae(seed: int):
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = _mlp([64, *HIDDEN, 2 * LATENT])

        def forward(self, x):
            loc, log_var = self.net(x.reshape(len(x), -1)).split(LATENT, dim=-1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = _mlp([LATENT, *HIDDEN, 64])

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    torch.manual_seed(seed)
    config = VAEConfig(input_dim=(64,), latent_dim=LATENT, reconstruction_loss="bce")
    return VAE(model_config=config, encoder=Encoder(), decoder=Decoder())


class _Clock:
    """Parameter snapshots at chosen epochs, and the wall time at the end of every epoch."""

    def __init__(self, module: nn.Module, keep_epochs):
        self.module, self.keep = module, set(keep_epochs)
        self.start = time.perf_counter()
        self.times: list[float] = []
        self.snapshots: dict[int, dict] = {}
        self.timeline: list[tuple[float, dict]] = []

    def epoch_end(self, keep_timeline: bool = False) -> None:
        self.times.append(time.perf_counter() - self.start)
        epoch = len(self.times)
        if epoch in self.keep:
            self.snapshots[epoch] = copy.deepcopy(self.module.state_dict())
        if keep_timeline:
            self.timeline.append((self.times[-1], copy.deepcopy(self.module.state_dict())))


def pythae_run(train, epochs: int, seed: int, keep_epochs):
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    model = _pythae_vae(seed)
    clock = _Clock(model, keep_epochs)

    class EpochClock(TrainingCallback):
        def on_epoch_end(self, training_config, **kwargs):
            clock.epoch_end()

    with tempfile.TemporaryDirectory() as out:
        config = BaseTrainerConfig(
            output_dir=out,
            num_epochs=epochs,
            per_device_train_batch_size=BATCH,
            learning_rate=LR,
            optimizer_cls="Adam",
            steps_saving=None,
            seed=seed,
            no_cuda=True,
        )
        dataset = BaseDataset(train, torch.zeros(len(train)))
        trainer = BaseTrainer(model, dataset, training_config=config, callbacks=[EpochClock()])
        clock.start = time.perf_counter()
        logging.disable(logging.INFO)  # pythae logs every epoch's loss
        try:
            trainer.train()
        finally:
            logging.disable(logging.NOTSET)

    def score(state, test):
        model.load_state_dict(state)
        model.eval()

        def encode(x):
            out = model.encoder(x)
            return out.embedding, torch.exp(0.5 * out.log_covariance)

        return heldout_elbo(encode, model.decoder.net, test)

    return clock, score


def zoo_run(train, epochs: int, seed: int, elbo: str, keep_epochs):
    model = _zoo_model(seed)
    steps_per_epoch = len(train) // BATCH
    clock = _Clock(model, keep_epochs)

    def callback(step: int, _loss: float) -> None:
        if step % steps_per_epoch == 0:
            clock.epoch_end(keep_timeline=True)

    clock.start = time.perf_counter()
    result = fit(model, model.guide, {"x": train}, steps=epochs * steps_per_epoch,
                 batch_size=BATCH, lr=LR, elbo=elbo, seed=seed, progress=False,
                 log_every=steps_per_epoch, validate=False, callback=callback)  # fmt: skip

    def score(state, test):
        model.load_state_dict(state)
        return heldout_elbo(model.encoder, model.decoder, test)

    return clock, score, result.elbo


def _at_time(clock: _Clock, seconds: float) -> dict:
    """The parameters at the last epoch that ended within ``seconds``."""
    within = [state for t, state in clock.timeline if t <= seconds]
    return within[-1] if within else clock.timeline[0][1]


def _mean_sd(values) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    if not available():
        return {
            "title": "vae_digits against pythae",
            "notes": "pythae is not installed (optional: pip install -e .[bench]); skipped.",
            "rows": [{"trainer": "skipped"}],
        }
    short, long = (5, 15) if quick else (100, 300)
    seeds = range(2 if quick else 3)
    train, test = _split()
    figures: dict[str, dict[str, list[float]]] = {}
    chosen = ""

    def add(arm: str, key: str, value: float) -> None:
        figures.setdefault(arm, {}).setdefault(key, []).append(value)

    for seed in seeds:
        clock, score = pythae_run(train, long, seed, (short, long))
        budget = clock.times[short - 1]  # pythae's wall time for the short run
        add("pythae VAE (analytic KL)", "short", score(clock.snapshots[short], test))
        add("pythae VAE (analytic KL)", "long", score(clock.snapshots[long], test))
        add("pythae VAE (analytic KL)", "equal time", score(clock.snapshots[short], test))
        add("pythae VAE (analytic KL)", "seconds", clock.times[long - 1])
        for elbo in ("auto", "jit"):
            clock, score, name = zoo_run(train, long, seed, elbo, (short, long))
            arm = f"zoo fit, elbo={elbo}" + (f" ({name})" if elbo == "auto" else " (sampled KL)")
            chosen = name if elbo == "auto" else chosen
            add(arm, "short", score(clock.snapshots[short], test))
            add(arm, "long", score(clock.snapshots[long], test))
            add(arm, "equal time", score(_at_time(clock, budget), test))
            add(arm, "seconds", clock.times[long - 1])
            add(arm, "epochs in that time", sum(t <= budget for t in clock.times))
    rows = [
        {
            "trainer": arm,
            f"ELBO after {short} epochs": _mean_sd(f["short"]),
            f"ELBO after {long} epochs": _mean_sd(f["long"]),
            f"ELBO at pythae's {short}-epoch wall time": _mean_sd(f["equal time"]),
            "epochs in that time": (
                f"{statistics.mean(f['epochs in that time']):.0f}"
                if "epochs in that time" in f
                else str(short)
            ),
            f"seconds for {long} epochs": _mean_sd(f["seconds"]),
        }
        for arm, f in figures.items()
    ]
    return {
        "title": "vae_digits against pythae: held-out ELBO at equal epochs and equal time",
        "notes": (
            f"Held-out ELBO per image (10 samples, nats, higher is better), mean ± sd over "
            f"{len(seeds)} seeds; same networks, split, batch {BATCH}, Adam {LR}, 1 thread. "
            f"elbo=auto chose {chosen}. Equal time: each zoo run's parameters at the last "
            f"epoch that ended within the time pythae took for {short} epochs (same seed). "
            f"An epoch is {len(train) // BATCH} steps in the zoo (its loader drops the last "
            f"partial batch) and {-(-len(train) // BATCH)} in pythae, so at equal epochs "
            "pythae has taken about 9% more steps."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)

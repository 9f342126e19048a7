"""vae_digits through the zoo engine against pythae's ``VAE``: held-out ELBO at equal epochs
and at equal time.

pythae is the library a user would otherwise pick for this model. Both train the same
networks (encoder 64-256-256-2x10, decoder 10-256-256-64, softplus; pythae's encoder emits a
log-variance, as its ``VAE`` requires) from the same initial weights, on the same 85/15
split of binarized ``load_digits``, batch 128 (an epoch is 12 steps on both sides, every row
seen), Adam at lr 1e-3, one CPU thread, five seeds; pythae through its own ``BaseTrainer`` (no
evaluation set, so no per-epoch evaluation), the zoo through ``inference.svi.fit`` with
``elbo="auto"`` (the analytic KL it now picks) and with ``elbo="jit"`` (the sampled KL,
the default before). Every model is scored by one evaluator (``benchmarks.vae_step``):
the 10-sample held-out ELBO per image. Time is the process's CPU time on its one thread
(``time.process_time``; on an idle machine the wall time), from the call that starts
training (set-up and JIT tracing included) to the end of each epoch: a figure that other
work on a shared machine does not move. Each zoo arm is also reported as its difference
from pythae paired by seed (the same initial weights).

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
from inference.data import steps_per_epoch
from inference.svi import fit


def available() -> bool:
    return importlib.util.find_spec("pythae") is not None


def _pythae_vae(seed: int):
    """pythae's VAE on the networks of the zoo's ``vae_digits`` at this seed, starting from
    the same initial weights (pythae reads the encoder's second half as a log-variance)."""
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

    config = VAEConfig(input_dim=(64,), latent_dim=LATENT, reconstruction_loss="bce")
    encoder, decoder, start_from = Encoder(), Decoder(), _zoo_model(seed)
    encoder.net.load_state_dict(start_from.encoder.net.state_dict())
    decoder.net.load_state_dict(start_from.decoder.state_dict())
    torch.manual_seed(seed)
    return VAE(model_config=config, encoder=encoder, decoder=decoder)


class _Clock:
    """Parameter snapshots at chosen epochs, and the CPU time at the end of every epoch."""

    def __init__(self, module: nn.Module, keep_epochs):
        self.module, self.keep = module, set(keep_epochs)
        self.start = time.process_time()
        self.times: list[float] = []
        self.snapshots: dict[int, dict] = {}
        self.timeline: list[tuple[float, dict]] = []

    def epoch_end(self, keep_timeline: bool = False) -> None:
        self.times.append(time.process_time() - self.start)
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
        clock.start = time.process_time()
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
    per_epoch = steps_per_epoch(len(train), BATCH)  # 12, as pythae's loader takes
    clock = _Clock(model, keep_epochs)

    def callback(step: int, _loss: float) -> None:
        if step % per_epoch == 0:
            clock.epoch_end(keep_timeline=True)

    clock.start = time.process_time()
    result = fit(model, model.guide, {"x": train}, steps=epochs * per_epoch,
                 batch_size=BATCH, lr=LR, elbo=elbo, seed=seed, progress=False,
                 log_every=per_epoch, validate=False, callback=callback)  # fmt: skip

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
    seeds = range(2 if quick else 5)
    train, test = _split()
    figures: dict[str, dict[str, list[float]]] = {}
    chosen = ""

    def add(arm: str, key: str, value: float) -> None:
        figures.setdefault(arm, {}).setdefault(key, []).append(value)

    for seed in seeds:
        clock, score = pythae_run(train, long, seed, (short, long))
        budget = clock.times[short - 1]  # pythae's CPU time for the short run
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
            f"ELBO at pythae's {short}-epoch time": _mean_sd(f["equal time"]),
            "epochs in that time": (
                f"{statistics.mean(f['epochs in that time']):.0f}"
                if "epochs in that time" in f
                else str(short)
            ),
            f"seconds for {long} epochs": _mean_sd(f["seconds"]),
        }
        for arm, f in figures.items()
    ]
    base = figures["pythae VAE (analytic KL)"]
    for arm, f in list(figures.items())[1:]:
        diff = {k: [a - b for a, b in zip(f[k], base[k], strict=True)] for k in base}
        rows.append({
            "trainer": f"{arm} minus pythae, paired by seed",
            f"ELBO after {short} epochs": _mean_sd(diff["short"]),
            f"ELBO after {long} epochs": _mean_sd(diff["long"]),
            f"ELBO at pythae's {short}-epoch time": _mean_sd(diff["equal time"]),
            "epochs in that time": "",
            f"seconds for {long} epochs": _mean_sd(diff["seconds"]),
        })  # fmt: skip
    return {
        "title": "vae_digits against pythae: held-out ELBO at equal epochs and equal time",
        "notes": (
            f"Held-out ELBO per image (10 samples, nats, higher is better), mean ± sd over "
            f"{len(seeds)} seeds; same networks, split, batch {BATCH}, Adam {LR}, 1 thread; "
            "seconds are CPU seconds of that thread. "
            f"elbo=auto chose {chosen}. Equal time: each zoo run's parameters at the last "
            f"epoch that ended within the time pythae took for {short} epochs (same seed). "
            f"Both start from the same weights; an epoch is "
            f"{steps_per_epoch(len(train), BATCH)} steps of {BATCH} on both sides."
        ),
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)

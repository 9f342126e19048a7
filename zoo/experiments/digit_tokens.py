"""digit_tokens (paper 30, DiGIT): the same class-conditional GPT over 16 patch tokens of
``load_digits`` from a discriminative tokenizer and from a reconstructive one.

Per seed s: ``tokenizer_rows`` images set aside (seeded by s) fit both tokenizers (K = 64),
their stage-2 decoders and the digits judge; the other rows are split (the model's seeded
``holdout``, 20%) into the AR model's training and test rows. Arms, each with the same rows,
GPT, optimiser, steps and learning rate (fixed for all seeds, not tuned on test rows):

- ``discriminative``: K-means on the patch features of a small conv encoder trained with
  labels and a noise-invariance term, never reconstructing pixels (the DINOv2 stand-in);
- ``reconstructive``: K-means on raw 2x2 patch pixels (the VQ stand-in).

Measured on the test rows: the token change rate under N(0, 0.1^2) pixel noise; the AR
model's bits per token (null class) beside the uniform log2 64 = 6 bits and a position-wise
unigram fitted on the training tokens (the simplest token model); a linear probe
(:func:`inference.representation.linear_probe`, trained on the training rows) of the AR
hidden states, beside the probe on raw pixels (the simplest strong baseline) and on the
one-hot tokens themselves (what the tokens hold before any AR modelling); the share of
class-conditional samples, decoded by stage 2, that the judge assigns to the class asked
for, beside the judge on stage-2 reconstructions of real test tokens and on the real images.
"""

from __future__ import annotations

import numpy as np
import pyro
import torch
from torch.nn import functional as F

import zoo
from inference.classifiers import accuracy
from inference.rate import bits
from inference.representation import linear_probe
from inference.svi import fit
from zoo.evidence import Figure, RunContext, recipe
from zoo.evidence.checks import Check
from zoo.models.digit_tokens import TOKENIZERS, DigitTokens

MODEL_KEYS = (
    "codebook_size",
    "tokenizer_rows",
    "encoder_steps",
    "decoder_steps",
    "judge_steps",
    "width",
    "layers",
    "heads",
)


def unigram_bits(train_tokens: torch.Tensor, test_tokens: torch.Tensor, k: int) -> float:
    """Bits per token of a position-wise unigram (add-1/2 counts on the training tokens)."""
    counts = F.one_hot(train_tokens, k).sum(0).double() + 0.5  # (16, K)
    logp = torch.log(counts / counts.sum(-1, keepdim=True))
    picked = logp.gather(1, test_tokens.T).T  # (N, 16)
    return float(bits(picked).mean())


def run_arm(tokenizer: str, seed: int, s: dict) -> tuple[dict, tuple]:
    """One arm: the model with ``tokenizer`` fitted on the seed's training rows; its figures
    on the test rows and ``(model, train, test, fit_result)``."""
    model = zoo.create(
        "digit_tokens",
        tokenizer=tokenizer,
        tokenizer_seed=seed,
        **{k: s[k] for k in MODEL_KEYS},
    )
    data = model.default_data()
    train, test = model.split(data, seed=seed)
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    result = fit(
        model,
        model.guide,
        train,
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        seed=seed,
        progress=False,
    )
    guide, k = model.guide, s["codebook_size"]
    x, y = test["x"], test["label"]
    out = {"change_rate": model.tokenizer.change_rate(x, 0.1, seed=seed)}
    per_token = bits(model.token_log_prob(guide, x))
    out["bits_per_token"] = float(per_token.mean())
    out["bits_per_image"] = float(per_token.sum(-1).mean())
    train_tokens, test_tokens = model.tokens(train["x"]), model.tokens(x)
    out["unigram_bits_per_token"] = unigram_bits(train_tokens, test_tokens, k)
    out["probe"] = linear_probe(
        model.hidden(train["x"]), train["label"], model.hidden(x), y, seed=seed
    )["accuracy"]
    onehot = [F.one_hot(t, k).flatten(1).float() for t in (train_tokens, test_tokens)]
    out["token_probe"] = linear_probe(onehot[0], train["label"], onehot[1], y, seed=seed)[
        "accuracy"
    ]
    out["sample_consistency"] = model.class_consistency(
        guide, per_class=s["samples_per_class"], seed=seed
    )["sample_consistency"]
    out["reconstruction_judged"] = accuracy(model.judge, model.decode(test_tokens), y)
    return out, (model, train, test, result)


@recipe(
    "digit_tokens",
    headline=[
        Figure("reconstructive/change_rate", "token change rate, sigma 0.1, pixel K-means", 3),
        Figure("discriminative/change_rate", "token change rate, sigma 0.1, discriminative", 3),
        Figure("reconstructive/bits_per_token", "AR bits/token, pixel K-means (uniform 6)", 2),
        Figure("discriminative/bits_per_token", "AR bits/token, discriminative (uniform 6)", 2),
        Figure("pixels/probe", "linear probe, raw pixels", 3),
        Figure("reconstructive/probe", "linear probe of AR hidden states, pixel K-means", 3),
        Figure("discriminative/probe", "linear probe of AR hidden states, discriminative", 3),
        Figure("reconstructive/sample_consistency", "judged class-consistency, pixel K-means", 3),
        Figure("discriminative/sample_consistency", "judged class-consistency, discriminative", 3),
    ],
    settings={
        "codebook_size": 64,
        "tokenizer_rows": 600,
        "encoder_steps": 600,
        "decoder_steps": 800,
        "judge_steps": 1500,
        "width": 64,
        "layers": 2,
        "heads": 4,
        "steps": 1000,
        "batch_size": 64,
        "lr": 2e-3,
        "samples_per_class": 50,
    },
    # the model's own tiny sizes (the contract test's), with fewer AR steps and samples
    quick={k: DigitTokens.tiny[k] for k in MODEL_KEYS} | {"steps": 10, "samples_per_class": 2},
    paper="Zhu et al., NeurIPS 2024, arXiv 2410.12490 (paper 30)",
    data="load_digits, 2x2 patches (16 tokens per image, K = 64); 600 images per seed set "
    "aside for the tokenizers, stage 2 and the judge, the rest split 80/20 for the AR model",
    claim="The same class-conditional GPT (MAP, same rows, steps and learning rate) over "
    "discriminative tokens (K-means on a supervised, noise-invariant encoder's patch features, "
    "no pixel reconstruction) against pixel K-means tokens: stability under N(0, 0.1^2) pixel "
    "noise, AR bits per token, a linear probe of the AR hidden states, and the judged "
    "class-consistency of class-conditional samples decoded by stage 2.",
    checks=[
        Check(
            "discriminative tokens change less under pixel noise",
            "discriminative/change_rate",
            "<=",
            "reconstructive/change_rate",
        ),
        Check(
            "the AR hidden states over discriminative tokens probe better",
            "discriminative/probe",
            ">=",
            "reconstructive/probe",
        ),
        Check(
            "class-conditional samples over discriminative tokens are more class-consistent",
            "discriminative/sample_consistency",
            ">=",
            "reconstructive/sample_consistency",
        ),
        Check(
            "the AR hidden states over discriminative tokens probe at least as well as raw pixels",
            "discriminative/probe",
            ">=",
            "pixels/probe",
            why="64 raw pixels of an 8x8 digit are already nearly linearly separable; the "
            "AR features are a 64-d mean over positions of a GPT trained on ~950 images",
        ),
        Check(
            "the AR model codes discriminative tokens in fewer bits than a position unigram",
            "discriminative/bits_per_token",
            "<=",
            "discriminative/unigram_bits_per_token",
        ),
        Check(
            "the AR model codes pixel K-means tokens in fewer bits than a position unigram",
            "reconstructive/bits_per_token",
            "<=",
            "reconstructive/unigram_bits_per_token",
            why="a third of the pixel K-means tokens are the blank-patch code, which position "
            "alone predicts well; the context adds little to a position unigram",
        ),
        Check(
            "the AR hidden states over discriminative tokens probe at least as well as the "
            "one-hot tokens themselves",
            "discriminative/probe",
            ">=",
            "discriminative/token_probe",
            why="the 64-d mean of the GPT's last hidden states keeps less of the class than "
            "the 1024-d one-hot token map; the paper probes an intermediate layer of a far "
            "larger GPT",
        ),
    ],
)
def digit_tokens(seed: int, ctx: RunContext) -> dict[str, float]:
    s = ctx.settings
    out: dict[str, float] = {}
    kept = None
    for tokenizer in TOKENIZERS:
        figures, kept = run_arm(tokenizer, seed, s)
        out.update({f"{tokenizer}/{k}": v for k, v in figures.items()})
    model, train, test, _ = kept
    out["pixels/probe"] = linear_probe(
        train["x"], train["label"], test["x"], test["label"], seed=seed
    )["accuracy"]
    out["real/judged"] = accuracy(model.judge, test["x"], test["label"])
    for key in ("change_rate", "bits_per_token", "probe", "sample_consistency"):
        out[f"disc_minus_rec/{key}"] = out[f"discriminative/{key}"] - out[f"reconstructive/{key}"]
    out["uniform/bits_per_token"] = float(np.log2(s["codebook_size"]))
    return out

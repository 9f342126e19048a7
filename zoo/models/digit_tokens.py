"""DiGIT at zoo scale: a categorical autoregressive model over the tokens of a
discriminative tokenizer, against the same model over reconstructive (pixel K-means) tokens.

Zhu, Li, Zhang, Li, Yuan & Bing (2024), "Stabilize the Latent Space for Image
Autoregressive Modeling: A Unified Perspective", NeurIPS 2024 (arXiv:2410.12490; code
github.com/DAMO-NLP-SG/DiGIT).

The paper's tokenizer is K-means on frozen self-supervised (DINOv2) patch features; a GPT
models the token sequence; a second stage maps tokens to pixels. Here (the spec's small
check): each 8x8 ``load_digits`` image is cut into 16 patches of 2x2 pixels (raster order),
and each patch gets one of K = 64 tokens from one of two tokenizers:

- ``reconstructive``: K-means on the raw patch pixels (the VQ stand-in: its tokens keep
  what reconstructs pixels);
- ``discriminative``: K-means on the patch features of a small conv encoder trained
  **without pixel reconstruction**: supervised (digit class from the pooled patch features)
  plus a noise-invariance term (the features of x and of x + N(0, sigma^2), sigma drawn from
  U(0, 0.2) per image, pulled together). The stand-in for DINOv2, trained with labels, which
  DINOv2 is not: say so where its figures are read.

Both tokenizers, the stage-2 decoder and the judge are fitted once on ``tokenizer_rows``
images set aside (seeded by ``tokenizer_seed``) and never seen by the AR model, as DINOv2
and the VQGAN were trained on other data than the GPT; the model's data are the other rows.

Generative story (stage 1, the Pyro model; N images, P = 16 positions, K tokens, width d)::

    H ~ Normal(0, 1)^{K x (d + 1)}                       the output head (weights and bias)
    c_n = label_n, or the null class (no label, or dropped with prob. ``label_dropout``)
    h_{n,p} = GPT_theta(c_n, s_{n,1..p-1})               causal transformer, h in R^d
    s_{n,p} | s_{n,<p} ~ Categorical(softmax(H [h_{n,p}; 1]))      p = 1..16

with the observed sequence s_n = tokenizer(x_n): the site ``x`` scores an image through its
16 tokens (one vectorised Categorical site, causally masked, ``to_event(1)``). The network
theta is a point estimate; the default guide is a point mass on H (``delta``: MAP, i.e.
MLE under a weak prior); ``--guide normal`` (or any kind) makes the head Bayesian.

Stage 2 (fitted once with the tokenizer, outside the Pyro model, as in the paper): the
decoded image is sigmoid(MLP(one-hot(s))), the pixel means, trained by binary cross-entropy
on the set-aside images. New rows (``zoo sample``) are token sequences
drawn from the AR model (given a label drawn from the data) decoded by stage 2.

Measures (:meth:`DigitTokens.evaluate`): the token change rate under pixel noise sigma =
0.1 (stability); AR bits per token and per image under the null class
(:func:`inference.rate.bits`; uniform = log2 K = 6 bits per token); a linear probe of the
AR hidden states (mean over positions, null class); class-consistency of class-conditional
samples decoded by stage 2, judged by a digits classifier fitted on the set-aside images.
Kept from the paper: K-means tokens on frozen discriminative features, next-token MLE with a
GPT, a separate token-to-pixel stage, the linear probe of the AR model's features. Changed:
DINOv2 -> a tiny supervised + noise-invariant conv encoder, 2x2 patches and K = 64,
a 2-layer GPT, an MLP stage 2 instead of a MaskGIT over VQGAN tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from inference.data import Field, full_batch
from inference.rate import bits
from inference.representation import linear_probe
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    check_positive_int,
    require_non_negative_numbers,
    require_positive_numbers,
)
from zoo.datasets.digits import NUM_DIGIT_CLASSES, digit_label_field
from zoo.registry import register

__all__ = ["DigitTokens", "TOKENIZERS", "patches", "Tokenizer", "digit_rows"]

TOKENIZERS = ("discriminative", "reconstructive")
POSITIONS = 16  # 2x2 patches of an 8x8 image
NULL = NUM_DIGIT_CLASSES  # the null class of the AR model's first token


def patches(x: torch.Tensor) -> torch.Tensor:
    """``(N, 64)`` images -> ``(N, 16, 4)`` 2x2 patches in raster order."""
    return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, POSITIONS, 4)


def digit_rows(tokenizer_seed: int, tokenizer_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokenizer, model)`` row indices of ``load_digits``: a seeded permutation, its first
    ``tokenizer_rows`` set aside for the tokenizers, stage 2 and the judge."""
    order = np.random.default_rng([int(tokenizer_seed), 30]).permutation(1797)
    return np.sort(order[:tokenizer_rows]), np.sort(order[tokenizer_rows:])


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    bunch = load_digits()
    x = torch.as_tensor(bunch.data / 16.0, dtype=torch.float32)
    return x, torch.as_tensor(bunch.target, dtype=torch.long)


class PatchEncoder(nn.Module):
    """A small conv net: 8x8 image -> 16 patch features (4x4 grid, ``width`` channels, each
    from a 6x6 receptive field), L2-normalised; a linear class head on the flattened grid
    (used in training only)."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.head = nn.Linear(POSITIONS * width, NUM_DIGIT_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.reshape(-1, 1, 8, 8))  # (N, width, 4, 4), raster over the grid
        return F.normalize(h.flatten(2).transpose(1, 2), dim=-1)  # (N, 16, width)


class Tokenizer:
    """A frozen tokenizer: patch features (raw pixels or the encoder's) and a K-means
    codebook; ``tokens(x)`` is the nearest centroid of each patch."""

    def __init__(self, kind: str, codebook: torch.Tensor, encoder: PatchEncoder | None):
        self.kind, self.codebook, self.encoder = kind, codebook, encoder

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.encoder is None:
            return patches(x)
        with torch.no_grad():
            return self.encoder(x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        d = (f.unsqueeze(-2) - self.codebook).pow(2).sum(-1)  # (N, 16, K)
        return d.argmin(-1)

    def change_rate(self, x: torch.Tensor, sigma: float, seed: int = 0) -> float:
        """The share of tokens that change when N(0, sigma^2) noise is added to every pixel
        (not clipped), one seeded draw."""
        x = torch.as_tensor(x, dtype=torch.float32)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(seed)))
        return float((self.tokens(x) != self.tokens(x + sigma * noise)).float().mean())


def _decoder(codebook_size: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(POSITIONS * codebook_size, hidden), nn.ReLU(), nn.Linear(hidden, 64)
    )


@functools.lru_cache(maxsize=8)
def fit_tokenizer(
    kind: str,
    codebook_size: int,
    tokenizer_seed: int,
    tokenizer_rows: int,
    encoder_steps: int,
    invariance: float,
    decoder_steps: int,
) -> tuple[Tokenizer, nn.Module]:
    """The tokenizer and its stage-2 decoder, fitted on the set-aside rows (cached)."""
    x_all, y_all = _digits()
    rows, _ = digit_rows(tokenizer_seed, tokenizer_rows)
    x, y = x_all[rows], y_all[rows]
    generator = torch.Generator().manual_seed(int(tokenizer_seed))
    with torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(int(tokenizer_seed))
        encoder = None
        if kind == "discriminative":
            encoder = PatchEncoder()
            opt = torch.optim.Adam(encoder.parameters(), lr=3e-3, weight_decay=1e-4)
            for _ in range(int(encoder_steps)):
                i = torch.randint(len(x), (min(128, len(x)),), generator=generator)
                sigma = 0.2 * torch.rand(len(i), 1, generator=generator)
                noisy = x[i] + sigma * torch.randn(len(i), 64, generator=generator)
                f, g = encoder(x[i]), encoder(noisy)
                loss = F.cross_entropy(encoder.head(f.flatten(1)), y[i]) + F.cross_entropy(
                    encoder.head(g.flatten(1)), y[i]
                )
                loss = loss + invariance * (f - g).pow(2).sum(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            encoder.eval()
            for p in encoder.parameters():
                p.requires_grad_(False)
        features = Tokenizer(kind, torch.zeros(1), encoder).features(x)
        flat = features.reshape(-1, features.shape[-1]).numpy().astype(np.float64)
        km = KMeans(codebook_size, n_init=1, random_state=int(tokenizer_seed)).fit(flat)
        codebook = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        tokenizer = Tokenizer(kind, codebook, encoder)
        # stage 2: tokens -> pixels, binary cross-entropy on the set-aside images
        decoder = _decoder(codebook_size)
        onehot = F.one_hot(tokenizer.tokens(x), codebook_size).float()
        opt = torch.optim.Adam(decoder.parameters(), lr=2e-3, weight_decay=1e-4)
        for _ in range(int(decoder_steps)):
            i = torch.randint(len(x), (min(128, len(x)),), generator=generator)
            loss = F.binary_cross_entropy_with_logits(decoder(onehot[i]), x[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
        decoder.eval()
        for p in decoder.parameters():
            p.requires_grad_(False)
    return tokenizer, decoder


@functools.lru_cache(maxsize=8)
def fit_judge(tokenizer_seed: int, tokenizer_rows: int, steps: int) -> nn.Module:
    """A digits classifier (MLP) trained on the set-aside real images: the judge of decoded
    samples (cached)."""
    from inference.classifiers import train_classifier

    x_all, y_all = _digits()
    rows, _ = digit_rows(tokenizer_seed, tokenizer_rows)
    with torch.enable_grad():
        return train_classifier(x_all[rows], y_all[rows], steps=steps, seed=tokenizer_seed)


class CausalGPT(nn.Module):
    """A small GPT: a class (or null) token then s_1..s_15, causal self-attention, the
    hidden state at position p predicting s_p."""

    def __init__(self, codebook_size: int, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.token = nn.Embedding(codebook_size, width)
        self.cls = nn.Embedding(NUM_DIGIT_CLASSES + 1, width)
        self.pos = nn.Parameter(0.02 * torch.randn(POSITIONS, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        mask = torch.triu(torch.full((POSITIONS, POSITIONS), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask)

    def forward(self, tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(N, P, d)`` for ``tokens`` ``(N, P)`` (the last is never read)."""
        inputs = torch.cat([self.cls(cls).unsqueeze(1), self.token(tokens[:, :-1])], 1)
        h = self.blocks(inputs + self.pos, mask=self.mask, is_causal=True)
        return self.norm(h)


@register
class DigitTokens(ZooModel):
    """DiGIT (paper 30, Zhu et al., NeurIPS 2024) at digit scale: a class-conditional
    causal transformer over 16 patch tokens of ``load_digits``, from a discriminative
    tokenizer (K-means on a supervised, noise-invariant encoder's patch features; no pixel
    reconstruction) or a reconstructive one (K-means on raw patch pixels), with a stage-2
    MLP decoder from tokens to pixels. See the module doc for the generative story."""

    name = "digit_tokens"
    summary = "DiGIT: GPT over discriminative vs pixel K-means patch tokens of digits"
    paper = 30
    optional_fields = ("label",)
    #: the default guide is a point mass (delta), whose 500 draws would repeat one: the run's
    #: idata covers 200 rows x 64 draws, each a tokenizer and GPT pass
    idata_rows = 200

    tiny = {
        "codebook_size": 16,
        "tokenizer_rows": 200,
        "encoder_steps": 20,
        "decoder_steps": 20,
        "judge_steps": 20,
        "width": 16,
        "layers": 1,
        "heads": 2,
        "steps": 20,
        "probe_rows": 0,
    }

    @dataclass
    class Config(TrainConfig):
        tokenizer: str = "discriminative"  # or "reconstructive" (K-means on raw patches)
        codebook_size: int = 64  # K
        tokenizer_seed: int = 0  # the set-aside rows, the encoder, K-means, stage 2, judge
        tokenizer_rows: int = 600  # images set aside for the tokenizer, stage 2 and judge
        encoder_steps: int = 600  # Adam steps of the discriminative encoder
        invariance: float = 1.0  # weight of its noise-invariance term
        decoder_steps: int = 800  # Adam steps of the stage-2 decoder
        judge_steps: int = 1500  # Adam steps of the digits judge
        width: int = 64  # d
        layers: int = 2
        heads: int = 4
        dropout: float = 0.1
        label_dropout: float = 0.2  # share of rows trained with the null class
        noise_sigma: float = 0.1  # pixel noise of the stability measure
        samples_per_class: int = 30  # decoded samples per class for the judge
        probe_rows: int = 200  # held-out rows of evaluate's probe split (0: no probe)
        steps: int | None = 1000
        batch_size: int = 64
        lr: float = 2e-3
        weight_decay: float = 0.0
        holdout: float = 0.2

    def __init__(self, config=None, *, priors=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.gpt = CausalGPT(c.codebook_size, c.width, c.layers, c.heads, c.dropout)
        if priors:
            self.set_priors(priors)

    def check_config(self) -> None:
        c = self.config
        if c.tokenizer not in TOKENIZERS:
            raise ConfigError(f"tokenizer must be one of {TOKENIZERS}, got {c.tokenizer!r}")
        ints = {
            "codebook_size": (2, 512),
            "tokenizer_rows": (50, 1500),
            "encoder_steps": (1, 10**6),
            "decoder_steps": (1, 10**6),
            "judge_steps": (1, 10**6),
            "width": (2, 1024),
            "layers": (1, 12),
            "heads": (1, 64),
            "samples_per_class": (1, 10**4),
            "probe_rows": (0, 1000),
            "tokenizer_seed": (0, 2**31),
        }
        for key, (lo, hi) in ints.items():
            value = getattr(c, key)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
        if c.width % c.heads:
            raise ConfigError(f"width ({c.width}) must be divisible by heads ({c.heads})")
        for key in ("dropout", "label_dropout"):
            if not 0.0 <= getattr(c, key) < 1.0:
                raise ConfigError(f"{key} must be in [0, 1), got {getattr(c, key)!r}")
        require_non_negative_numbers(c, "invariance")
        require_positive_numbers(c, "noise_sigma")

    # ----- the frozen parts -------------------------------------------------------------------

    def _frozen(self) -> tuple[Tokenizer, nn.Module]:
        c = self.config
        return fit_tokenizer(
            c.tokenizer,
            c.codebook_size,
            c.tokenizer_seed,
            c.tokenizer_rows,
            c.encoder_steps,
            c.invariance,
            c.decoder_steps,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        return self._frozen()[0]

    @property
    def decoder(self) -> nn.Module:
        return self._frozen()[1]

    @property
    def judge(self) -> nn.Module:
        c = self.config
        return fit_judge(c.tokenizer_seed, c.tokenizer_rows, c.judge_steps)

    def tokens(self, x) -> torch.Tensor:
        """The 16 tokens of each image ``x`` ``(N, 64)``."""
        return self.tokenizer.tokens(torch.as_tensor(x, dtype=torch.float32).cpu()).to(self.device)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stage 2: the decoded images (pixel means in (0, 1)) of token sequences."""
        onehot = F.one_hot(tokens.cpu(), self.config.codebook_size).float()
        with torch.no_grad():
            return torch.sigmoid(self.decoder(onehot)).to(self.device)

    # ----- data and priors --------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        return {
            "x": Field(
                shape=(64,),
                support=constraints.unit_interval,
                doc="8x8 digit, pixels in [0, 1] (scored through its 16 tokens)",
                image=(8, 8),
            ),
            "label": digit_label_field("the class token the AR model is conditioned on"),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("x",)

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The ``load_digits`` rows not set aside for the tokenizer (fixed by the config's
        ``tokenizer_seed``; ``seed`` does not change them)."""
        x, y = _digits()
        _, rows = digit_rows(self.config.tokenizer_seed, self.config.tokenizer_rows)
        return {"x": x[rows], "label": y[rows]}

    def default_priors(self) -> dict[str, dist.Distribution]:
        return {"head": dist.Normal(0.0, 1.0)}

    def dims(self) -> dict[str, list[str]]:
        return {"head": ["token", "feature"]}

    # ----- the model --------------------------------------------------------------------------

    def _head_prior(self) -> dist.Distribution:
        c = self.config
        prior = self.prior("head")
        return prior.expand([c.codebook_size, c.width + 1]).to_event(2)

    def logits(self, h: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        """Token logits ``(N, P, K)`` from hidden states ``(N, P, d)`` and the head
        ``(K, d+1)``; a head with batch dims ``(..., 1, K, d+1)`` (draws left of the data
        plate) gives ``(..., N, P, K)``."""
        w, b = head[..., :-1], head[..., -1]
        return h @ w.transpose(-1, -2) + b.unsqueeze(-2)

    def classes(self, batch, *, drop: bool) -> torch.Tensor:
        rows = len(batch["x"])
        if "label" not in batch:
            return torch.full((rows,), NULL, dtype=torch.long, device=self.device)
        cls = batch["label"].long()
        if drop and self.config.label_dropout > 0:
            keep = torch.rand(rows, device=self.device) >= self.config.label_dropout
            cls = torch.where(keep, cls, torch.full_like(cls, NULL))
        return cls

    def model(self, batch) -> None:
        tokens = self.tokens(batch["x"])
        drop = self.training and torch.is_grad_enabled()
        cls = self.classes(batch, drop=drop)
        head = pyro.sample("head", self._head_prior())
        logits = self.logits(self.gpt(tokens, cls), head)
        with self.data_plate(batch):
            pyro.sample("x", dist.Categorical(logits=logits).to_event(1), obs=tokens)

    def default_guide(self) -> torch.nn.Module:
        import guides

        return guides.build("delta", self)

    # ----- measures ---------------------------------------------------------------------------

    def head_value(self, guide, data) -> torch.Tensor:
        """The guide's median head (zeros, the prior's median, without a guide)."""
        c = self.config
        if guide is None:
            return torch.zeros(c.codebook_size, c.width + 1, device=self.device)
        batch = full_batch({k: torch.as_tensor(v)[:2].to(self.device) for k, v in data.items()})
        with torch.no_grad():
            return guide.median(batch)["head"].detach()

    def token_log_prob(self, guide, x, label=None) -> torch.Tensor:
        """``log p(s_p | s_<p, c)`` per token ``(N, 16)`` (the null class without labels)."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        tokens = self.tokens(x)
        batch = {"x": x} if label is None else {"x": x, "label": torch.as_tensor(label)}
        head = self.head_value(guide, batch)
        with self.inference_mode():
            logits = self.logits(self.gpt(tokens, self.classes(batch, drop=False)), head)
            return dist.Categorical(logits=logits).log_prob(tokens)

    def hidden(self, x) -> torch.Tensor:
        """The AR model's features of images: its last hidden states under the null class,
        averaged over the 16 positions ``(N, d)``."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        tokens = self.tokens(x)
        with self.inference_mode():
            cls = torch.full((len(x),), NULL, dtype=torch.long, device=self.device)
            return self.gpt(tokens, cls).mean(1)

    def generate(self, guide, labels, *, seed: int = 0, data=None) -> torch.Tensor:
        """Token sequences ``(N, 16)`` drawn from the AR model given class ``labels`` (NULL
        = 10 for unconditional draws), ancestral sampling at temperature 1."""
        labels = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        reference = data if data is not None else self.default_data()
        head = self.head_value(guide, reference)
        generator = torch.Generator().manual_seed(int(seed))
        tokens = torch.zeros(len(labels), POSITIONS, dtype=torch.long, device=self.device)
        with self.inference_mode():
            for p in range(POSITIONS):
                logits = self.logits(self.gpt(tokens, labels)[:, p : p + 1], head)[:, 0]
                probs = torch.softmax(logits, -1).cpu()
                tokens[:, p] = torch.multinomial(probs, 1, generator=generator)[:, 0].to(
                    self.device
                )
        return tokens

    def class_consistency(self, guide, *, per_class: int | None = None, seed: int = 0) -> dict:
        """Class-conditional samples (``per_class`` of each digit) decoded by stage 2 and
        classified by the judge: the share judged as the class asked for, and the judge's
        accuracy on stage-2 reconstructions of real tokens (the cap stage 2 sets)."""
        per_class = per_class or self.config.samples_per_class
        labels = torch.arange(NUM_DIGIT_CLASSES).repeat_interleave(per_class)
        images = self.decode(self.generate(guide, labels, seed=seed)).cpu()
        judge = self.judge
        with torch.no_grad():
            judged = judge(images).argmax(-1)
        return {"sample_consistency": float((judged == labels).float().mean())}

    def evaluate(self, guide, data) -> dict:
        """On ``data`` (held-out rows): the token change rate under pixel noise, the AR
        bits per token and per image (null class; and given the label), the judge's accuracy
        on stage-2 reconstructions and on class-conditional samples, and a linear probe of
        the AR hidden states beside one on raw pixels (a seeded random split of ``data``:
        ``probe_rows``, at most half, held out, the rest trained on; the recipe probes with
        the training rows instead)."""
        c = self.config
        x = torch.as_tensor(data["x"], dtype=torch.float32)
        out = {"change_rate": self.tokenizer.change_rate(x, c.noise_sigma)}
        per_token = bits(self.token_log_prob(guide, x))
        out["bits_per_token"] = float(per_token.mean())
        out["bits_per_image"] = float(per_token.sum(-1).mean())
        out["uniform_bits_per_token"] = float(np.log2(c.codebook_size))
        if "label" in data:
            label = torch.as_tensor(data["label"])
            conditional = bits(self.token_log_prob(guide, x, label))
            out["bits_per_token_given_class"] = float(conditional.mean())
            with torch.no_grad():
                recon = self.decode(self.tokens(x)).cpu()
                out["reconstruction_judged"] = float(
                    (self.judge(recon).argmax(-1) == label.cpu()).float().mean()
                )
            out.update(self.class_consistency(guide))
            rows = len(x)
            if c.probe_rows and rows >= 2 * NUM_DIGIT_CLASSES + 10:
                test = min(c.probe_rows, rows // 2)
                order = torch.randperm(rows, generator=torch.Generator().manual_seed(0))
                tr, te = order[test:], order[:test]
                z = self.hidden(x).cpu()
                y = label.cpu()
                try:
                    out["probe_accuracy"] = linear_probe(z[tr], y[tr], z[te], y[te])["accuracy"]
                    out["raw_probe_accuracy"] = linear_probe(x[tr], y[tr], x[te], y[te])["accuracy"]
                except ValueError:
                    pass  # too few rows of a class for the probe's cross-validation
        return out

    # ----- new rows and figures ---------------------------------------------------------------

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """``num`` new images: labels resampled from ``data`` (seeded), token sequences drawn
        from the AR model given them, decoded by stage 2 (pixel means in (0, 1) whatever
        ``mean``: stage 2 is fitted by cross-entropy, its mean is the image)."""
        check_positive_int("num", num)
        size = len(data["x"])
        rows = torch.randint(size, (num,), generator=torch.Generator().manual_seed(int(seed)))
        if "label" in data:
            labels = torch.as_tensor(data["label"])[rows].long()
        else:
            labels = torch.full((num,), NULL, dtype=torch.long)
        tokens = self.generate(guide, labels, seed=seed, data=data)
        return {"x": self.decode(tokens), "label": labels.to(self.device)}

    def figures(self, guide, data, *, idata=None) -> dict:
        """Real images over their tokens' stage-2 reconstructions, and decoded
        class-conditional samples (one row per class)."""
        return {
            "reconstructions": lambda: token_figure(self, data["x"][:10]),
            "samples": lambda: sample_figure(self, guide),
        }


def token_figure(model: DigitTokens, x):
    """Images (top), their token maps (middle) and stage-2 decodings of the tokens."""
    import matplotlib.pyplot as plt

    x = torch.as_tensor(x, dtype=torch.float32)[:10]
    tokens = model.tokens(x)
    recon = model.decode(tokens).cpu()
    fig, axes = plt.subplots(3, len(x), figsize=(1.1 * len(x), 3.4), squeeze=False)
    for i in range(len(x)):
        axes[0, i].imshow(x[i].reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[1, i].imshow(tokens[i].reshape(4, 4).cpu().numpy(), cmap="tab20", vmin=0)
        axes[2, i].imshow(recon[i].reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, text in enumerate(("image", "tokens", "stage 2")):
        axes[row, 0].set_ylabel(text)
    fig.suptitle(f"{model.config.tokenizer} tokenizer")
    fig.tight_layout()
    return fig


def sample_figure(model: DigitTokens, guide, per_class: int = 8, seed: int = 0):
    """Class-conditional samples decoded by stage 2: one row per digit class."""
    import matplotlib.pyplot as plt

    labels = torch.arange(NUM_DIGIT_CLASSES).repeat_interleave(per_class)
    images = model.decode(model.generate(guide, labels, seed=seed)).cpu()
    fig, axes = plt.subplots(NUM_DIGIT_CLASSES, per_class, figsize=(per_class * 0.8, 8.0))
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i].reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"samples, {model.config.tokenizer} tokens")
    fig.tight_layout()
    return fig

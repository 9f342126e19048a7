"""Latent label shift: discover classes from domains whose label mix shifts. Roberts,
Mani, Garg & Lipton (2022), "Unsupervised Learning under Latent Label Shift", NeurIPS 2022
(arXiv:2207.13179).

The paper's DDFA estimator: (1) a domain discriminator f(x) ~ p(d | x); (2) discretize the
inputs by k-means on f(x); (3) factorize the code-by-domain table p(c | d) = sum_y p(c | y)
p(y | d) (NMF); (4) recover p_d(y | x). Here steps 1-2 are the data pipeline
(:func:`ddfa_codes`: an sklearn MLP discriminator, cross-fitted so no point is clustered on
an over-fit output, then k-means), and step 3 is the Bayesian topic model over the codes,
with the class of each point a discrete latent: summed out exactly in :meth:`model`,
enumerated in :meth:`enumerated_model` (TraceEnum_ELBO, NUTS) and decoded per point by
``infer_discrete``. Step 4 is replaced by that per-point posterior p(y | c, d).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate, infer_discrete
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from inference.data import Field, full_batch
from inference.metrics import hungarian_accuracy, match_classes
from zoo.base import (
    ConfigError,
    TrainConfig,
    ZooModel,
    require_positive_ints,
    require_positive_numbers,
)
from zoo.registry import register

__all__ = [
    "LatentLabelShift",
    "SUPER_CLASSES",
    "make_domains",
    "ddfa_codes",
    "kmeans_baseline",
]

#: five super-classes of two visually different digits each (the paper's check)
SUPER_CLASSES = ((0, 6), (1, 7), (2, 5), (3, 8), (4, 9))


def make_domains(
    seed: int,
    *,
    num_domains: int = 15,
    per_domain: int = 80,
    alpha: float = 0.5,
    max_cond: float = 8.0,
) -> dict[str, np.ndarray]:
    """Paired-digit super-classes of ``load_digits`` over Dirichlet domains.

    pi_d ~ Dirichlet(alpha / K), redrawn until cond(Pi) <= ``max_cond`` (entries below 1e-7
    set to 0); each domain gets ``per_domain`` images drawn without replacement, with class
    counts ~ Multinomial(per_domain, pi_d). Returns pixels ``x`` in [0, 1], ``domain``,
    super-class ``label``, the digit and ``pi``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    to_super = np.empty(10, dtype=np.int64)
    for k, pair in enumerate(SUPER_CLASSES):
        to_super[list(pair)] = k
    super_label = to_super[digits.target]
    k = len(SUPER_CLASSES)
    rng = np.random.default_rng(seed)
    for _ in range(10_000):
        pi = rng.dirichlet(np.full(k, alpha / k), size=num_domains)
        pi[pi < 1e-7] = 0.0
        pi /= pi.sum(1, keepdims=True)
        if np.linalg.cond(pi) > max_cond:
            continue
        counts = np.stack([rng.multinomial(per_domain, row) for row in pi])
        if np.all(counts.sum(0) <= np.bincount(super_label, minlength=k)):
            break
    else:  # pragma: no cover - the loop ends in a handful of draws for these settings
        raise RuntimeError("could not draw well-conditioned domains; raise max_cond")
    pools = [rng.permutation(np.flatnonzero(super_label == c)) for c in range(k)]
    taken = np.zeros(k, dtype=np.int64)
    index, domain = [], []
    for d in range(num_domains):
        for c in range(k):
            n = counts[d, c]
            index.extend(pools[c][taken[c] : taken[c] + n])
            taken[c] += n
            domain.extend([d] * n)
    index = np.asarray(index)
    return {
        "x": digits.data[index] / 16.0,
        "domain": np.asarray(domain, dtype=np.int64),
        "label": super_label[index],
        "digit": digits.target[index],
        "pi": pi,
    }


def ddfa_codes(
    x: np.ndarray, domain: np.ndarray, num_codes: int, seed: int = 0, folds: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """DDFA steps 1-2: a domain discriminator p(d | x) (sklearn MLP, cross-fitted over
    ``folds`` so every point's output comes from a network that did not train on it), then
    k-means with ``num_codes`` clusters on those outputs. Returns ``(codes, p_domain)``."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neural_network import MLPClassifier

    num_domains = int(domain.max()) + 1
    p_domain = np.zeros((len(x), num_domains))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, held in split.split(x, domain):
        net = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=400, random_state=seed)
        with warnings.catch_warnings():
            # 400 epochs leave the weights short of a tight optimum; the outputs are what count
            warnings.simplefilter("ignore", ConvergenceWarning)
            net.fit(x[train], domain[train])
        p_domain[np.ix_(held, net.classes_)] = net.predict_proba(x[held])
    kmeans = KMeans(num_codes, n_init=4, random_state=seed).fit(p_domain)
    return kmeans.labels_.astype(np.int64), p_domain


def kmeans_baseline(x: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> float:
    """Hungarian accuracy of k-means with K clusters on the raw inputs."""
    from sklearn.cluster import KMeans

    pred = KMeans(num_classes, n_init=4, random_state=seed).fit(x).labels_
    return hungarian_accuracy(pred, labels, num_classes)


@functools.lru_cache(maxsize=8)
def _digits_data(seed, num_domains, per_domain, alpha, max_cond, num_codes):
    raw = make_domains(
        seed, num_domains=num_domains, per_domain=per_domain, alpha=alpha, max_cond=max_cond
    )
    codes, _ = ddfa_codes(raw["x"], raw["domain"], num_codes, seed=seed)
    return codes, raw


@register
class LatentLabelShift(ZooModel):
    """Bayesian topic model over DDFA codes for latent label shift, paper 25: Roberts, Mani,
    Garg & Lipton, "Unsupervised Learning under Latent Label Shift", NeurIPS 2022
    (arXiv:2207.13179). K classes, D domains (observed), m codes::

        pi_d  ~ Dirichlet(alpha / K * 1_K)       p(y | d), per domain d
        phi_y ~ Dirichlet(1_m)                   p(c | y), shared by all domains
        y_n   ~ Categorical(pi_{d_n})            latent class
        c_n   ~ Categorical(phi_{y_n})           observed code (DDFA steps 1-2)

    so p(c | d) = sum_y phi_y(c) pi_d(y): a topic model (codes = words, domains =
    documents, classes = topics). ``model`` sums y out exactly; ``enumerated_model`` keeps
    it as a site for TraceEnum_ELBO, NUTS and ``infer_discrete``. An adaptation: the paper
    factorizes p(c | d) by NMF and recovers p_d(y | x) from p(d | x); here the factorization
    is Bayesian and the per-point posterior is p(y | c, d). Classes are found up to
    permutation; scores use Hungarian matching.
    """

    name = "latent_label_shift"
    summary = "Topic model over discriminator codes: classes from domains under label shift"
    paper = 25
    supports_nuts = True
    static_structure = True

    tiny = {"per_domain": 20, "steps": 20}

    @dataclass
    class Config(TrainConfig):
        num_classes: int = 5
        num_domains: int = 15
        num_codes: int = 30
        alpha: float = 0.5
        per_domain: int = 80  # rows per domain (default data: images; simulate: codes)
        max_cond: float = 8.0  # default data: cap on cond(Pi)
        batch_size: int = 1200
        lr: float = 0.05

    def check_config(self) -> None:
        c = self.config
        require_positive_ints(
            c, "num_classes", "num_domains", "num_codes", "per_domain", "batch_size"
        )
        if c.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {c.num_classes}")
        if c.num_codes < c.num_classes:
            raise ConfigError(
                f"num_codes must be >= num_classes ({c.num_classes}), got {c.num_codes}"
            )
        require_positive_numbers(c, "alpha")
        if not c.max_cond >= 1:
            raise ConfigError(f"max_cond must be >= 1, got {c.max_cond}")

    def data_spec(self) -> dict[str, Field]:
        c = self.config
        return {
            "code": Field(
                dtype="int",
                support=constraints.integer_interval(0, c.num_codes - 1),
                doc="discretized input (cluster id of the DDFA pipeline)",
            ),
            "domain": Field(
                dtype="int",
                support=constraints.integer_interval(0, c.num_domains - 1),
                doc="observed domain id",
            ),
            "label": Field(
                dtype="int",
                support=constraints.integer_interval(-1, c.num_classes - 1),
                doc="true class for scoring only (-1: unknown); never used in training",
            ),
        }

    @property
    def observed_sites(self) -> tuple[str, ...]:
        return ("code",)

    def default_priors(self) -> dict[str, dist.Distribution]:
        c = self.config
        return {
            "pi": dist.Dirichlet(torch.full((c.num_classes,), c.alpha / c.num_classes)),
            "phi": dist.Dirichlet(torch.ones(c.num_codes)),
        }

    def _globals(self):
        c = self.config
        pi = pyro.sample("pi", self.prior("pi").expand([c.num_domains]).to_event(1))
        phi = pyro.sample("phi", self.prior("phi").expand([c.num_classes]).to_event(1))
        return pi, phi

    def model(self, batch) -> None:
        pi, phi = self._globals()
        with self.data_plate(batch):
            code_given_domain = pi @ phi  # (..., D, m): p(c | d), y summed out
            probs = Vindex(code_given_domain)[..., batch["domain"], :]
            pyro.sample("code", dist.Categorical(probs), obs=batch["code"])

    @config_enumerate
    def enumerated_model(self, batch) -> None:
        """The same joint with each point's class ``y`` as a site (parallel enumeration)."""
        pi, phi = self._globals()
        with self.data_plate(batch):
            y = pyro.sample("y", dist.Categorical(Vindex(pi)[..., batch["domain"], :]))
            pyro.sample("code", dist.Categorical(Vindex(phi)[..., y, :]), obs=batch["code"])

    def nuts_init(self, data) -> dict[str, torch.Tensor]:
        """Every chain starts at one short SVI fit: the K! relabellings are separate modes
        NUTS does not cross, so chains from independent starts would each pick their own
        labelling and R-hat would read the permutation, not the mixing."""
        return self.svi_point_estimate(data, steps=1500, lr=self.config.lr)

    def simulate(self, seed: int = 0) -> tuple[dict, dict]:
        """``(truth, data)``: the globals pi and phi from the prior, then ``per_domain``
        rows per domain (domains round-robin), each with its class y and code. The classes
        are the data's ``label`` field (y is summed out of :meth:`model`)."""
        c = self.config
        num_rows = c.num_domains * c.per_domain
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            pi = self.prior("pi").expand([c.num_domains]).sample()
            phi = self.prior("phi").expand([c.num_classes]).sample()
            domain = torch.arange(num_rows) % c.num_domains
            y = dist.Categorical(pi[domain]).sample()
            code = dist.Categorical(phi[y]).sample()
        return {"pi": pi, "phi": phi}, self.validate({"code": code, "domain": domain, "label": y})

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """Codes of the paired-digit check: load_digits super-classes over Dirichlet domains
        (:func:`make_domains`), discretized by :func:`ddfa_codes`."""
        c = self.config
        codes, raw = _digits_data(
            seed, c.num_domains, c.per_domain, c.alpha, c.max_cond, c.num_codes
        )
        if c.num_classes != len(SUPER_CLASSES):
            raise ConfigError(
                f"the default data has {len(SUPER_CLASSES)} classes; num_classes is "
                f"{c.num_classes} (pass your own data)"
            )
        return self.validate({"code": codes, "domain": raw["domain"], "label": raw["label"]})

    def sample_new_rows(self, num, *, data, guide=None, draws=None, seed=0, mean=False):
        """New codes for domains resampled from ``data`` (the default); ``label`` is -1
        (unknown): the model's classes carry no names, so a new row's class is not a
        label of the data."""
        rows = super().sample_new_rows(
            num, data=data, guide=guide, draws=draws, seed=seed, mean=mean
        )
        rows["label"] = torch.full_like(rows["label"], -1)
        return rows

    def digits_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        """The raw inputs behind :meth:`default_data` (pixels, digits, the true Pi)."""
        c = self.config
        return _digits_data(seed, c.num_domains, c.per_domain, c.alpha, c.max_cond, c.num_codes)[1]

    def dims(self) -> dict[str, list[str]]:
        return {"pi": ["domain", "class"], "phi": ["class", "code"], "code": ["row"]}

    # ----- per-point posteriors and scores -------------------------------------------------

    def class_posterior(self, pi: torch.Tensor, phi: torch.Tensor, data) -> torch.Tensor:
        """p(y_n | c_n, d_n) in closed form, (N, K), given the globals."""
        joint = pi[data["domain"]] * phi[:, data["code"]].T
        return joint / joint.sum(-1, keepdim=True)

    def decode(self, globals_: dict, data, temperature: int = 0) -> torch.Tensor:
        """Per-point classes by ``infer_discrete`` on the enumerated model with the globals
        fixed (temperature 0: MAP class; 1: a posterior draw)."""
        batch = full_batch(data)
        fixed = poutine.condition(
            self.enumerated_model, data={k: globals_[k] for k in ("pi", "phi")}
        )
        decoded = infer_discrete(fixed, first_available_dim=-2, temperature=temperature)
        with torch.no_grad():
            trace = poutine.trace(decoded).get_trace(batch)
        return trace.nodes["y"]["value"]

    def scores(self, pi: torch.Tensor, phi: torch.Tensor, data) -> dict:
        """Hungarian-matched accuracy of the MAP classes and the mean L1 error of p(y | d)
        against the label frequencies per domain (rows with a known label)."""
        pred = self.decode({"pi": pi, "phi": phi}, data).cpu().numpy()
        labels = data["label"].cpu().numpy()
        known = labels >= 0
        if not known.any():
            return {"note": "no labels to score against (label = -1 everywhere)"}
        k, num_domains = self.config.num_classes, self.config.num_domains
        perm = match_classes(pred[known], labels[known], k)
        domain = data["domain"].cpu().numpy()[known]
        freq = np.zeros((num_domains, k))
        np.add.at(freq, (domain, labels[known]), 1)
        seen = freq.sum(1) > 0
        freq = freq[seen] / freq[seen].sum(1, keepdims=True)
        pi_matched = np.zeros((num_domains, k))
        pi_matched[:, perm] = pi.cpu().numpy()
        return {
            "accuracy": float(np.mean(perm[pred[known]] == labels[known])),
            "pi_l1": float(np.abs(pi_matched[seen] - freq).sum(1).mean()),
        }

    def evaluate(self, guide, data) -> dict:
        """Hungarian-matched accuracy and p(y | d) error at the guide's median."""
        with torch.no_grad():
            median = guide.median(full_batch(data))
        return self.scores(median["pi"], median["phi"], data)

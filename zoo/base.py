"""The contract every zoo model follows.

A zoo model is a :class:`~pyro.nn.PyroModule` with a generative ``model(batch)``, a default
guide, declared (overridable) priors, a description of its data, offline default data and an
``evaluate`` that reports the paper's headline metric at zoo scale.

Template for a new model (keep sample sites few and vectorized: plates, never Python loops
over sites, so every engine path - vectorized particles, JIT, NUTS - applies)::

    @register
    class MyModel(ZooModel):
        '''Generative story in math, citation.'''
        name = "my_model"
        paper = 12
        local_sites = ("z",)          # amortized by ``local_guide``
        static_structure = True       # no data-dependent control flow: JIT-traced loss

        @dataclass
        class Config(TrainConfig):      # training fields (lr, batch_size, ...) inherited
            latent_dim: int = 4
            lr: float = 1e-3            # a model's own training defaults

        tiny = {"latent_dim": 2, "steps": 20}   # a config small enough for the tests

        def data_spec(self): return {"x": Field(shape=(16,))}
        def default_priors(self): return {"w": dist.Normal(0.0, 1.0)}
        def model(self, batch):
            w = pyro.sample("w", self.prior("w"))
            with self.data_plate(batch):
                ...
        def simulate(self, seed=0):   # only where the truth is known: (truth, data)
            ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from inference.config import TrainConfig, TrainConfigError
from inference.data import (
    DATA_PLATE,
    Batch,
    DataError,
    Field,
    full_batch,
    holdout_split,
    validate_data,
)
from zoo.priors import PriorError, check_override

__all__ = [
    "ZooModel",
    "ConfigError",
    "DATA_PLATE",
    "TrainConfig",
    "check_positive_int",
    "require_positive_ints",
    "require_non_negative_ints",
    "require_positive_numbers",
    "require_non_negative_numbers",
    "require_positive_sizes",
]


class ConfigError(ValueError):
    """A configuration value that cannot be used: the message names the key."""


# ----- shared checks for a model's ``check_config`` ----------------------------------------
# Each takes the config and the names of its fields, and raises a ConfigError naming the first
# field that fails. Bools are refused where a number is asked for (``True`` is not a size), and
# so are NaN and infinities.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    if _is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _require(config: Any, keys: tuple[str, ...], ok: Callable[[Any], bool], what: str) -> None:
    for key in keys:
        value = getattr(config, key)
        if not ok(value):
            raise ConfigError(f"{key} must be {what}, got {value!r}")


def check_positive_int(name: str, value: Any) -> None:
    """A call's count argument (``num`` rows to draw): an int >= 1, not a bool, or a
    ValueError naming ``name`` (a config's counts raise ConfigError through the checks below)."""
    if not (_is_int(value) and value >= 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_positive_ints(config: Any, *keys: str) -> None:
    """Each of ``keys`` holds an int >= 1 (not a bool, not a float such as 2.0)."""
    _require(config, keys, lambda v: _is_int(v) and v >= 1, "a positive integer")


def require_non_negative_ints(config: Any, *keys: str) -> None:
    """Each of ``keys`` holds an int >= 0 (a count that may be zero: steps, burn-in)."""
    _require(config, keys, lambda v: _is_int(v) and v >= 0, "an integer >= 0")


def require_positive_numbers(config: Any, *keys: str) -> None:
    """Each of ``keys`` holds a finite real > 0, an int or a float (scales, rates, weights)."""
    _require(config, keys, lambda v: _is_finite_number(v) and v > 0, "a positive number")


def require_non_negative_numbers(config: Any, *keys: str) -> None:
    """Each of ``keys`` holds a finite real >= 0, an int or a float (a weight that may be off,
    a noise level that may be zero)."""
    _require(config, keys, lambda v: _is_finite_number(v) and v >= 0, "a finite number >= 0")


def require_positive_sizes(config: Any, *keys: str, allow_empty: bool = False) -> None:
    """Each of ``keys`` holds layer sizes (``hidden=(64, 32)``): a tuple (or list) of ints
    >= 1, non-empty unless ``allow_empty`` (a model whose network may have no hidden layer)."""
    for key in keys:
        value = getattr(config, key)
        if not isinstance(value, tuple | list) or not all(_is_int(h) and h >= 1 for h in value):
            raise ConfigError(f"{key} sizes must be positive integers, got {value!r}")
        if not value and not allow_empty:
            raise ConfigError(f"{key} must hold at least one size, got {value!r}")


def _tuples(value: Any) -> Any:
    """JSON's lists as the tuples a Config holds (configs never hold lists)."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _config_from(cls: type, config: Any, overrides: Mapping[str, Any]) -> Any:
    """A ``cls`` instance from a Config, a dict (e.g. read back from ``config_json``) or
    None, with ``overrides``; unknown keys are refused with the valid ones."""
    if config is None:
        config = cls()
    elif isinstance(config, Mapping):
        config = _config_from(cls, None, config)
    elif not isinstance(config, cls):
        raise ConfigError(f"config must be a {cls.__qualname__} or a dict, got {type(config)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {sorted(names)}")
    return dataclasses.replace(config, **{k: _tuples(v) for k, v in overrides.items()})


class ZooModel(PyroModule):
    """Base class of zoo models. Subclasses set the class attributes and implement
    :meth:`data_spec`, :meth:`default_priors`, :meth:`model`, :meth:`default_data`
    and :meth:`evaluate`; models with amortized local latents implement :meth:`local_guide`,
    models whose data can be drawn with known truth implement :meth:`simulate`.
    """

    #: registry key (snake_case)
    name: ClassVar[str] = ""
    #: one line for ``zoo list`` (each variant of a family its own)
    summary: ClassVar[str] = ""
    #: number of the paper in ``papers.md`` (``None`` for reference models)
    paper: ClassVar[int | None] = None
    #: sample sites under the data plate that the model's encoder amortizes
    local_sites: ClassVar[tuple[str, ...]] = ()
    #: plates nested in the model (for vectorized particles and draws)
    max_plate_nesting: ClassVar[int] = 1
    #: rows a run's ``idata.nc`` covers (with few draws, as for local latents) for a model
    #: whose rows are large (episodes of frames); None: every row, or the local-latent cap
    idata_rows: ClassVar[int | None] = None
    #: data fields that may be left out (ground-truth factors kept for diagnostics): checked
    #: when given, not required
    optional_fields: ClassVar[tuple[str, ...]] = ()
    #: engines the model is small enough for
    supports_nuts: ClassVar[bool] = False
    #: keyword arguments of :func:`inference.mcmc.nuts` the model's posterior needs
    #: (e.g. ``{"dense_mass": True}`` for strongly correlated globals)
    nuts_options: ClassVar[Mapping[str, Any]] = {}
    #: rows are exchangeable given the globals, so minibatches (and DDP ranks) may split
    #: them; False for a model whose rows depend on each other (one long time series)
    splittable: ClassVar[bool] = True
    #: sites and shapes never depend on data values: the loss may be traced by the JIT
    #: (``elbo="auto"`` then takes the compiled path)
    static_structure: ClassVar[bool] = False
    #: the data enter through a Monte Carlo estimate of their log-likelihood (a diffusion
    #: decoder's denoising loss at a random timestep), not an exact density: importance
    #: weights p(x, z) / q(z | x) are then undefined, and run reports skip the guide's k-hat
    likelihood_is_estimate: ClassVar[bool] = False
    #: why the local guide is the model's own and takes no family of ``guides.local``
    #: (a closed-form or point-mass guide; may be a property of the config); empty: its
    #: ``local_guide`` draws every local site through ``guides.local.sample``, so
    #: ``local=normal|mvn|flow`` all apply
    fixed_local_guide: ClassVar[str] = ""

    #: config overrides that make the model small and fast enough for the contract tests
    #: (a few seconds of ``zoo train`` on 2 CPU cores); merged over the defaults
    tiny: ClassVar[Mapping[str, Any]] = {}

    @dataclasses.dataclass
    class Config(TrainConfig):
        """The model's hyperparameters; subclasses extend it (and so keep the training
        fields of :class:`~inference.config.TrainConfig`)."""

    def __init__(
        self,
        config: Any = None,
        *,
        priors: Mapping[str, dist.Distribution] | None = None,
        **config_overrides: Any,
    ):
        super().__init__()
        self.config = _config_from(type(self).Config, config, config_overrides)
        try:
            self.config.check_training()
        except TrainConfigError as error:
            raise ConfigError(str(error)) from None
        self.check_config()
        self.priors: dict[str, dist.Distribution] = {}
        self._guide_module: torch.nn.Module | None = None
        if priors:
            self.set_priors(priors)

    # ----- configuration and priors -------------------------------------------------------

    def check_config(self) -> None:
        """Refuse out-of-range hyperparameters with a ConfigError (override per model; the
        training fields are checked before this is called)."""

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def config_json(self) -> str:
        return json.dumps(self.config_dict(), indent=2, sort_keys=True)

    def default_priors(self) -> dict[str, dist.Distribution]:
        """The declared priors: site name -> default distribution."""
        return {}

    def set_priors(self, priors: Mapping[str, dist.Distribution]) -> None:
        """Override declared priors by site name; checked before any work is done."""
        declared = self.default_priors()
        for site, prior in priors.items():
            if site not in declared:
                raise PriorError(
                    f"unknown prior site '{site}' for model '{self.name}'; "
                    f"declared prior sites: {sorted(declared)}"
                )
            self.priors[site] = check_override(site, declared[site], prior)

    def prior(self, site: str) -> dist.Distribution:
        """The prior at ``site``: the user's override if given, else the declared default."""
        prior = self.priors.get(site)
        if prior is None:
            prior = self.default_priors()[site]
        return _on_device(prior, self.device)

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    # ----- data ---------------------------------------------------------------------------

    def data_spec(self) -> dict[str, Field]:
        """Field name -> per-row shape, dtype and support of the model's data."""
        raise NotImplementedError

    @property
    def observed_sites(self) -> tuple[str, ...]:
        """Sample sites observed through ``obs=`` (defaults to the data fields' names)."""
        return tuple(self.data_spec())

    def validate(self, data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Check user data against :meth:`data_spec`; return it as tensors."""
        spec = self.data_spec()
        if isinstance(data, Mapping):
            spec = {k: f for k, f in spec.items() if k in data or k not in self.optional_fields}
        try:
            return validate_data(data, spec)
        except DataError as error:
            hint = self.data_error_hint(error)
            if hint is None:
                raise
            raise DataError(f"{error}; {hint}") from None

    def split(
        self, data: Mapping[str, torch.Tensor], seed: int = 0
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """``(train, held_out)``: the config's seeded ``holdout`` fraction of the rows held
        out, exactly as ``zoo train --seed SEED`` splits them (``held_out`` is None when the
        config holds none out). Train on the first, :meth:`evaluate` on the second."""
        return holdout_split(data, self.config.holdout, seed)

    def data_error_hint(self, error: DataError) -> str | None:
        """Advice this model adds to a data error (e.g. the config setting that accepts
        such data); None for none."""
        return None

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The model's offline default data set (synthetic or shipped in a PyPI package)."""
        raise NotImplementedError

    def simulate(self, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(truth, data)`` with known truth, for recovery tests and simulation-based
        calibration: ``truth`` maps latent site names of :meth:`model` (and deterministic
        sites where useful) to their true values, and ``data`` (valid for :meth:`validate`)
        is drawn from the model's generative story given them. Design inputs (covariates,
        environments, domains, row counts) come from the config or the default data, so the
        call needs only the seed; the same seed gives the same draw, and the global RNG
        state is left as it was. Quantities of the simulation that are not sites of the model
        (a downstream target's weights, firing rates) stay out of ``truth``; a model that
        has them offers them through its own method. Models with known truth override this
        (see :meth:`has_truth`)."""
        raise NotImplementedError(
            f"model '{self.name}' has no simulator with known truth (simulate is not defined)"
        )

    @classmethod
    def has_truth(cls) -> bool:
        """Whether the model overrides :meth:`simulate` (draws data with known truth)."""
        return cls.simulate is not ZooModel.simulate

    def data_plate(self, batch: Batch) -> pyro.plate:
        """The plate over rows, subsampled to the batch so the ELBO scales by N / B."""
        return pyro.plate(DATA_PLATE, batch.size, subsample=batch.index, dim=-1)

    # ----- generative model and guides ----------------------------------------------------

    def model(self, batch: Batch) -> None:
        raise NotImplementedError

    def forward(self, batch: Batch) -> None:
        return self.model(batch)

    def local_guide(self, batch: Batch, global_values: Mapping[str, Any] | None = None) -> None:
        """Amortized guide for :attr:`local_sites` (models with local latents override),
        given the global guide's draws. Draw each real-valued site through
        ``guides.local.sample`` (and read the encoder through ``guides.local.encode``) so
        every local guide family and encoder swap applies."""
        if self.local_sites:
            raise NotImplementedError(f"{self.name} declares local sites but no local_guide")

    def default_guide(self) -> torch.nn.Module:
        """The model's own guide: mean-field Normal on globals plus the local encoder."""
        import guides

        return guides.build("normal", self)

    def nuts_init(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Starting values for NUTS on ``data`` (``None``: the prior median). A model whose
        posterior has modes NUTS cannot cross (label switching) or a slow transient
        overrides this."""
        return None

    def nuts_target(self) -> Callable[[Batch], None]:
        """What NUTS samples: the model itself, or a method with the same posterior of the
        globals whose per-row latents are in coordinates NUTS mixes better in (its draws
        are turned into the model's own sites by :meth:`from_nuts_draws`)."""
        return self

    def from_nuts_draws(
        self, draws: Mapping[str, Any], data: Mapping[str, torch.Tensor]
    ) -> Mapping[str, Any]:
        """Draws of :meth:`nuts_target` on ``data`` (site -> array with leading dims, e.g.
        (chain, draw)) as draws of the model's own sites: unchanged unless nuts_target
        samples other coordinates."""
        return draws

    def svi_point_estimate(
        self,
        data: Mapping[str, torch.Tensor],
        *,
        guide: str = "normal",
        seed: int = 0,
        **fit_options: Any,
    ) -> dict[str, torch.Tensor]:
        """The global sites' posterior medians after a short SVI fit on ``data``: a start
        for NUTS past a slow transient, and one labelling for every chain of a model with
        label switching (chains started in one mode stay in it). ``fit_options`` go to
        :func:`inference.svi.fit` (default 1000 steps at lr 0.02)."""
        import guides
        from inference.svi import fit

        fitted = guides.build(guide, self)
        options = {"steps": 1000, "lr": 0.02, "progress": False, **fit_options}
        fit(self, fitted, data, seed=seed, **options)
        with torch.no_grad():
            median = fitted.median(full_batch(data))
        return {name: value.detach().clone() for name, value in median.items()}

    @property
    def guide(self) -> torch.nn.Module:
        """The default guide, built once (call it as ``model.guide(batch)``)."""
        if self._guide_module is None:
            # stored outside the module tree so the model's parameters stay the model's own
            object.__setattr__(self, "_guide_module", self.default_guide())
        return self._guide_module

    # ----- evaluation and ArviZ naming ----------------------------------------------------

    def evaluate(self, guide: torch.nn.Module, data: Mapping[str, torch.Tensor]) -> dict:
        """The paper's headline metric(s) at zoo scale. A model whose metrics need the
        simulation's truth takes it as a keyword, ``evaluate(guide, data, *, truth=None,
        **extras)`` (``truth`` and the extras of :meth:`simulate_with_extras` indexed like
        ``data``): ``zoo train`` passes them when the run's data are the model's own
        simulation (checked, never assumed)."""
        return {}

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims per site (names of the non-sample dimensions)."""
        return {}

    def coords(self, data: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    # ----- new data and figures -----------------------------------------------------------

    def sample_new_rows(
        self,
        num: int,
        *,
        data: Mapping[str, torch.Tensor],
        guide: torch.nn.Module | None = None,
        draws: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``num`` new rows drawn from the fitted generative model, as a data set in the
        format of :meth:`data_spec` (field -> ``(num, *field.shape)``).

        The rows are one draw of a new data set from the posterior predictive
        ``p(rows_1..num | data)``: one joint draw of the global latents (from the fitted
        ``guide``, or a random one of the posterior ``draws``, ``site -> (S, *shape)``, e.g.
        NUTS; neither: the prior), then every site under the data plate drawn forward from
        the model given it: new local latents from their prior (a VAE's ``z ~ p(z)``), new
        observations given both. Networks and other parameters are the model's own.

        Conditional models read inputs that they do not generate (every field that is not
        in :attr:`observed_sites`: covariates, regressors, episodes' inputs, a domain):
        those are taken from ``num`` rows of ``data`` resampled with replacement (seeded),
        and returned with the new observations. ``data`` are the training rows (the guide
        is run on one of them for its global draw).

        Override where the model's new data cannot come from running :meth:`model` forward
        (a likelihood entering as a ``pyro.factor``, a decoder with its own sampler) or
        where a field is an annotation, not an input (e.g. a label kept for scoring).

        :param mean: give each generated field's mean given the drawn latents instead of a
            draw from it (the same latents as ``mean=False`` with the same seed): pictures
            of binary images read better as pixel probabilities.
        """
        inputs, trace = self._forward_rows(num, data=data, guide=guide, draws=draws, seed=seed)
        return self._rows_from_trace(inputs, trace, mean=mean)

    def _forward_rows(self, num, *, data, guide=None, draws=None, seed=0, fixed=None):
        """``(inputs, trace)``: ``num`` resampled input rows and a forward trace of the
        model on them given one fitted draw of the globals (see :meth:`sample_new_rows`);
        ``fixed`` sets other sites too (e.g. local latents drawn some other way)."""
        from inference.generate import draw_globals, forward_trace, global_sites, guide_globals

        check_positive_int("num", num)

        data = {k: torch.as_tensor(v).to(self.device) for k, v in data.items()}
        size = len(next(iter(data.values())))
        generator = torch.Generator().manual_seed(int(seed))
        rows = torch.randint(size, (num,), generator=generator).to(self.device)
        inputs = {k: v.index_select(0, rows) for k, v in data.items()}
        batch = full_batch(inputs)
        with self.inference_mode(), _forked_rng(self.device, seed):
            names, reference = global_sites(self.model, batch)
            values: dict[str, torch.Tensor] = {}
            if names and draws is not None:
                values = draw_globals(draws, names, reference, generator)
            elif names and guide is not None:
                # the guide sees one training row (its plate keeps the full size): its
                # global draw does not depend on which rows it sees
                first = torch.zeros(1, dtype=torch.long, device=self.device)
                one = Batch({k: v[:1] for k, v in data.items()}, index=first, size=size)
                values = guide_globals(guide, one, names, reference)
            values.update(fixed or {})
            trace = forward_trace(self.model, batch, values, observed=self.observed_sites)
        return inputs, trace

    def _rows_from_trace(self, inputs, trace, *, mean=False) -> dict[str, torch.Tensor]:
        """The data set of a forward trace: observed fields from their sites (their draws,
        or with ``mean`` their distributions' means), the other fields from ``inputs``."""
        out: dict[str, torch.Tensor] = {}
        num = len(next(iter(inputs.values())))
        for key, field in self.data_spec().items():
            if key in self.observed_sites:
                value = trace.nodes[key]["value"]
                if mean:
                    value = _mean_of(trace.nodes[key]["fn"], value)
                value = value.detach().reshape((num, *field.shape))
                dtype = torch.long if field.dtype == "int" and not mean else torch.float32
                out[key] = value.round().to(dtype) if dtype == torch.long else value.to(dtype)
            elif key in inputs:
                out[key] = inputs[key]
        return out

    def images(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pictures of data rows: field -> ``(N, H, W)``, ``(N, C, H, W)`` or, for a field
        holding several images per row (frames), ``(N, F, H, W)``. The default reshapes
        every field whose :class:`~inference.data.Field` declares ``image``; a model whose
        picture combines fields overrides this."""
        out = {}
        for key, field in self.data_spec().items():
            if field.image is None or key not in data:
                continue
            value = torch.as_tensor(data[key])
            rows, per_row = value.shape[0], math.prod(field.shape)
            frames = per_row // math.prod(field.image)
            shape = (rows, *field.image) if frames == 1 else (rows, frames, *field.image)
            out[key] = value.reshape(shape)
        return out

    def figures(
        self, guide: torch.nn.Module | None, data: Mapping[str, torch.Tensor], *, idata: Any = None
    ) -> dict[str, Any]:
        """The model's own figures for a run's folder and report: name -> a
        :class:`matplotlib.figure.Figure`, or a zero-argument callable that makes one (so
        that one failing figure does not lose the others: the report notes it instead).
        Each is saved as ``figures/<name>.png`` and linked in ``report.md``.

        :param guide: the fitted guide (``None`` for NUTS runs).
        :param data: the training rows, on the model's device.
        :param idata: the run's ``arviz.InferenceData``.

        The default draws, for every image field (:meth:`images`), ``samples`` (data rows
        above new rows from :meth:`sample_new_rows`) and, with a guide, ``reconstructions``
        (data rows above the mean of the observation given the guide's latents). Keep each
        figure cheap: a few seconds on a CPU."""
        from inference.generate import draws_from_idata
        from zoo import figures as pictures

        draws = draws_from_idata(idata) if guide is None and idata is not None else None
        return pictures.image_figures(self, guide, data, draws=draws)

    @contextlib.contextmanager
    def inference_mode(self):
        """No gradients and evaluation mode (no dropout, no training-time masking) for
        drawing new data and figures; the previous mode is restored."""
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _mean_of(fn: dist.Distribution, default: torch.Tensor) -> torch.Tensor:
    """A distribution's mean, or ``default`` (a draw) where it has none."""
    try:
        return fn.mean
    except NotImplementedError:
        return default


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int):
    """Seed torch's generator for a block and restore it afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _on_device(prior: dist.Distribution, device: torch.device) -> dist.Distribution:
    """Rebuild a distribution whose parameters live on another device (priors are declared
    with Python floats, i.e. on the CPU)."""
    if device.type == "cpu":
        return prior
    params = {k: getattr(prior, k) for k in prior.arg_constraints if k in prior.__dict__}
    if all(not torch.is_tensor(v) or v.device == device for v in params.values()):
        return prior
    if isinstance(prior, dist.Independent):
        base = _on_device(prior.base_dist, device)
        return dist.Independent(base, prior.reinterpreted_batch_ndims)
    return type(prior)(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in params.items()})

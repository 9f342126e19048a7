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
        class Config:
            latent_dim: int = 4

        def data_spec(self): return {"x": Field(shape=(16,))}
        def default_priors(self): return {"w": dist.Normal(0.0, 1.0)}
        def model(self, batch):
            w = pyro.sample("w", self.prior("w"))
            with self.data_plate(batch):
                ...
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from inference.data import Batch, Field, full_batch, validate_data
from zoo.priors import PriorError, check_override

__all__ = ["ZooModel", "ConfigError", "DATA_PLATE"]

DATA_PLATE = "data"


class ConfigError(ValueError):
    """A configuration value that cannot be used: the message names the key."""


def _config_from(cls: type, config: Any, overrides: Mapping[str, Any]) -> Any:
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
    return dataclasses.replace(config, **overrides)


class ZooModel(PyroModule):
    """Base class of zoo models. Subclasses set the class attributes and implement
    :meth:`data_spec`, :meth:`default_priors`, :meth:`model`, :meth:`default_data`
    and :meth:`evaluate`; models with amortized local latents implement :meth:`local_guide`.
    """

    #: registry key (snake_case)
    name: ClassVar[str] = ""
    #: number of the paper in ``papers.md`` (``None`` for reference models)
    paper: ClassVar[int | None] = None
    #: sample sites under the data plate that the model's encoder amortizes
    local_sites: ClassVar[tuple[str, ...]] = ()
    #: plates nested in the model (for vectorized particles and draws)
    max_plate_nesting: ClassVar[int] = 1
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
    #: why the local guide is the model's own and takes no family of ``guides.local``
    #: (a closed-form or point-mass guide; may be a property of the config); empty: its
    #: ``local_guide`` draws every local site through ``guides.local.sample``, so
    #: ``local=normal|mvn|flow`` all apply
    fixed_local_guide: ClassVar[str] = ""

    @dataclasses.dataclass
    class Config:
        pass

    def __init__(
        self,
        config: Any = None,
        *,
        priors: Mapping[str, dist.Distribution] | None = None,
        **config_overrides: Any,
    ):
        super().__init__()
        self.config = _config_from(type(self).Config, config, config_overrides)
        self.check_config()
        self.priors: dict[str, dist.Distribution] = {}
        self._guide_module: torch.nn.Module | None = None
        if priors:
            self.set_priors(priors)

    # ----- configuration and priors -------------------------------------------------------

    def check_config(self) -> None:
        """Refuse out-of-range hyperparameters with a ConfigError (override per model)."""

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
        return validate_data(data, self.data_spec())

    def default_data(self, seed: int = 0) -> dict[str, torch.Tensor]:
        """The model's offline default data set (synthetic or shipped in a PyPI package)."""
        raise NotImplementedError

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
        """The paper's headline metric(s) at zoo scale."""
        return {}

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims per site (names of the non-sample dimensions)."""
        return {}

    def coords(self, data: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


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

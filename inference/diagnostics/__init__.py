"""Posterior diagnostics: ArviZ where ArviZ has them, plus what the zoo adds."""

from inference.diagnostics.collapse import collapse_table, latent_activity
from inference.diagnostics.extreme_effects import ExtremeEffects, extreme_effects
from inference.diagnostics.infomec import InfoMEC, infomec
from inference.diagnostics.khat import guide_khat, khat_verdict, pointwise_khat
from inference.diagnostics.latent_mi import LatentMI, latent_mi
from inference.diagnostics.sbc import SBCPowerWarning, SBCResult, sbc, sbc_power
from inference.diagnostics.summary import divergences, loo, summary
from inference.diagnostics.traversal import TraversalPurity, traversal_purity
from inference.relative import RelativeSimilarity, relative_similarity

__all__ = [
    "ExtremeEffects",
    "InfoMEC",
    "LatentMI",
    "RelativeSimilarity",
    "SBCPowerWarning",
    "SBCResult",
    "TraversalPurity",
    "collapse_table",
    "divergences",
    "extreme_effects",
    "guide_khat",
    "infomec",
    "khat_verdict",
    "latent_activity",
    "latent_mi",
    "loo",
    "pointwise_khat",
    "relative_similarity",
    "sbc",
    "sbc_power",
    "summary",
    "traversal_purity",
]

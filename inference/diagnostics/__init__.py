"""Posterior diagnostics: ArviZ where ArviZ has them, plus what the zoo adds."""

from inference.diagnostics.collapse import collapse_table, latent_activity
from inference.diagnostics.khat import guide_khat, khat_verdict, pointwise_khat
from inference.diagnostics.sbc import SBCResult, sbc
from inference.diagnostics.summary import divergences, loo, summary

__all__ = [
    "SBCResult",
    "collapse_table",
    "divergences",
    "guide_khat",
    "khat_verdict",
    "latent_activity",
    "loo",
    "pointwise_khat",
    "sbc",
    "summary",
]

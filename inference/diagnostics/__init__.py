"""Posterior diagnostics: ArviZ where ArviZ has them, plus what the zoo adds."""

from inference.diagnostics.summary import divergences, loo, summary

__all__ = ["divergences", "loo", "summary"]

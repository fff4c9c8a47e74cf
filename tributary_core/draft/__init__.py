"""Drafting metadata.json: offline heuristics (:func:`draft_metadata`) and an LLM agent over an
OpenAI-compatible chat API (:mod:`tributary_core.draft.agent`)."""

from tributary_core.draft.heuristics import draft_metadata

__all__ = ["draft_metadata"]

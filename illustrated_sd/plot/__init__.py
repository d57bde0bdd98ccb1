"""Matplotlib figures drawn from a Trace. Every helper only reads the trace and returns the Figure."""

from .attention import token_heatmaps

__all__ = ["token_heatmaps"]

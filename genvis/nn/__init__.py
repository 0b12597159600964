"""Reusable Linen layers shared by every model family."""

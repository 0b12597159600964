"""Autoregressive decoding: compiled loops with explicit KV caches."""

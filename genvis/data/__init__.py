"""Data: sources (embedded defaults, files, tfds), tokenizers, deterministic global batching.

Only this package imports tensorflow / tensorflow_datasets, and only lazily.
"""

"""Data: sources (embedded defaults, files, tfds), tokenizers, deterministic global batching;
images (digits, scenes, tfds, folders) through one preprocessing path, and colour palettes.

Only this package imports tensorflow / tensorflow_datasets, and only lazily.
"""

"""Evaluation of trained models: in-context (zero/one/few-shot) evaluation of language models
as in GPT-3 (few_shot_tasks, prompts, scoring and the runner `python -m genvis.eval.few_shot`),
linear probes of image features (probe) and bits/dim baselines (bits_per_dim)."""

"""Evaluation of trained models; so far in-context (zero/one/few-shot) evaluation of language
models as in GPT-3: tasks (few_shot_tasks), prompts (prompts), scoring (scoring) and the
runner `python -m genvis.eval.few_shot`."""

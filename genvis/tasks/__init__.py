"""Objectives, registered by name; `config.task` picks one.

Tasks are imported lazily, so a run pays only for the task it uses.
"""

import importlib

from genvis.errors import UserError

_TASKS = {
    "lm": "genvis.tasks.lm:LanguageModelTask",
    "sft": "genvis.tasks.sft:SupervisedFineTuningTask",
    "igpt": "genvis.tasks.igpt:ImageGPTTask",
    "mae": "genvis.tasks.mae:MAETask",
    "classify": "genvis.tasks.classify:ClassificationTask",
    "clip": "genvis.tasks.clip:ContrastiveTask",
    "sde": "genvis.tasks.sde:ScoreSDETask",
}


def build_task(config, workdir: str | None, *, process_index: int = 0, process_count: int = 1):
  """The task object for `config.task`, with its data and model built."""
  if config.task not in _TASKS:
    raise UserError(f"config.task={config.task!r}: expected one of {', '.join(_TASKS)}")
  module_name, class_name = _TASKS[config.task].split(":")
  task_class = getattr(importlib.import_module(module_name), class_name)
  return task_class(config, workdir, process_index=process_index, process_count=process_count)

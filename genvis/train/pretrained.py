"""Load a trained run back from its workdir: the config it recorded and its newest params.

    trainer, params = load_trained("runs/tiny")
    logits = trainer.task.model.apply({"params": params}, tokens)

For evaluation tools, fine-tuning and benchmarks that start from what `genvis.main` wrote:
workdir/config.json (the resolved config) and workdir/checkpoints.
"""

import json
import os

import ml_collections

from genvis.errors import UserError


def read_config(workdir: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """workdir/config.json as a locked ConfigDict, with dotted-key overrides applied."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: is {workdir!r} the workdir of a genvis run?")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  config.lock()
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      if parent not in node:
        raise UserError(f"config key {key!r} does not exist in {path}")
      node = node[parent]
    if leaf not in node:
      raise UserError(f"config key {key!r} does not exist in {path}")
    node[leaf] = value
  return config


def load_trained(workdir: str, overrides: dict | None = None, devices=None):
  """(trainer, params): the run's task and model rebuilt from its config, and the newest
  readable checkpoint's parameters (EMA parameters when the run kept them);
  `trainer.restored_step` is that checkpoint's step."""
  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  trainer = Trainer(read_config(workdir, overrides), workdir, devices)
  state = trainer.restore_latest()
  trainer.restored_step = int(state.step)
  params = state.ema_params if state.ema_params is not None else state.params
  return trainer, params

"""Imported GPT weights as a genvis workdir: config.json, tokenizer.json and a step-0 checkpoint.

A workdir is what every genvis tool starts from (`genvis.main --mode=sample|eval|train`,
`genvis.train.pretrained.load_trained`), so an imported checkpoint is written as one: the
config is a configs/gpt_lm.py config whose model fields are the checkpoint's, and the
checkpoint is a full train state at step 0 (parameters, fresh optimizer moments) written by
the Trainer's own Checkpointer with the task's metadata, so restoring it goes through exactly
the checks and shardings of a resumed run, and training from it fine-tunes the import.
"""

import os
import shlex

import jax

from genvis import config_lib
from genvis.data import tokenizers
from genvis.errors import UserError

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_spec(variant: str) -> str:
  """configs/gpt_lm.py for a published GPT variant ("gpt2", "gpt1"), with a BPE tokenizer:
  its recipe (batch, learning rate) is kept, its model fields are replaced by the import's."""
  return os.path.join(_REPO, "configs", "gpt_lm.py") + f":size={variant},tok=bpe"


def write_lm_workdir(model_fields: dict, params, workdir: str, *, tokenizer_path: str | None,
                     config_spec: str, overrides: dict | None = None):
  """Write `params` (a GPT tree for `model_fields`) as a new workdir; returns its config,
  `config_spec`'s config (e.g. `default_spec("gpt2")`) with `overrides` and the model fields.

  tokenizer_path: a tokenizer.json (genvis's or Hugging Face's format) that becomes the
  workdir's tokenizer; None keeps config.data's (workdir/tokenizer.json if present, else
  one fitted to config.data's text).
  """
  checkpoints = os.path.join(workdir, "checkpoints")
  if (os.path.exists(os.path.join(workdir, "config.json"))
      or (os.path.isdir(checkpoints) and os.listdir(checkpoints))):
    raise UserError(f"{workdir} already holds a genvis run; use a new workdir")
  try:
    config = config_lib.load_config(config_spec, overrides)
    config.model.update(model_fields)
  except (KeyError, AttributeError, TypeError) as e:
    raise UserError(f"cannot set up the config from {config_spec}: {e}") from None
  if tokenizer_path:
    tokenizer = tokenizers.load(tokenizer_path)
    config.data.tokenizer = tokenizer.kind
    config.data.bpe_vocab_size = tokenizer.vocab_size
    os.makedirs(workdir, exist_ok=True)
    tokenizer.save(os.path.join(workdir, tokenizers.FILENAME))

  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  trainer = Trainer(config, workdir)
  try:
    state = _initial_state(trainer, params)
    config_lib.write_config(config, workdir)
    trainer.checkpointer.save(0, state, trainer.task.metadata())
    trainer.checkpointer.wait()
  finally:
    trainer.checkpointer.close()
  return config


def _initial_state(trainer, params):
  """The train state `Trainer._init_state` would build, with `params` in place of a random
  initialisation, laid out with the trainer's shardings."""
  expected = trainer.abstract_state.params
  if jax.tree.structure(params) != jax.tree.structure(expected):
    raise UserError("the imported parameters do not have the tree of config.model "
                    f"(scan_layers={trainer.config.model.scan_layers})")
  for (path, value), spec in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                 jax.tree.leaves(expected)):
    if (value.shape, value.dtype) != (spec.shape, spec.dtype):
      raise UserError(f"params{jax.tree_util.keystr(path)} is {value.dtype}{value.shape}, "
                      f"config.model expects {spec.dtype}{spec.shape}")
  return trainer.state_from_params(params)


def config_overrides(config, config_spec: str) -> dict:
  """The dotted-key overrides that turn `config_spec`'s config into `config`."""
  def flatten(tree, prefix=""):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from flatten(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value

  base = dict(flatten(config_lib.load_config(config_spec).to_dict()))
  return {k: v for k, v in flatten(config.to_dict()) if k in base and base[k] != v}


def sample_command(config, config_spec: str, workdir: str) -> str:
  """A `genvis.main --mode=sample` command line whose config equals the workdir's."""
  flags = [f"--config.{k}={v}" for k, v in config_overrides(config, config_spec).items()]
  return shlex.join(["python", "-m", "genvis.main", "--mode=sample", f"--config={config_spec}",
                     f"--workdir={workdir}", *flags])

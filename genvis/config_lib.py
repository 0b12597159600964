"""Config helpers shared by every `configs/*.py`: the trainer's default sections, variant
strings ("size=tiny,data=file"), and writing the resolved config."""

import ast
import json
import os

import ml_collections

from genvis import atomic_files
from genvis.errors import UserError
from genvis.train import xla_options
from genvis.train.mesh import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
  """Sections every experiment has; a config file adds task, model and data."""
  c = ml_collections.ConfigDict()
  c.task = ""
  c.seed = 0
  # A run's workdir or one checkpoint (workdir/checkpoints/<step>) whose parameters start this
  # run (fine-tuning); "" starts from scratch. The run's own checkpoints take precedence.
  c.init_from = ""

  c.train = dict(
      steps=1000,
      log_every=50,
      grad_accum_steps=1,
      ema_decay=0.0,  # 0: no EMA of parameters
      progress_bar=True,
      # XLA options for the train and eval steps; each backend gets its own (xla_gpu_*, xla_cpu_*,
      # xla_tpu_*) and the unprefixed ones (genvis/train/xla_options.py).
      xla_options=dict(xla_options.DEFAULT),
  )
  c.optim = dict(
      name="adamw",
      lr=1e-3,
      min_lr=1e-4,  # final learning rate of the decay
      warmup_steps=100,
      decay="cosine",  # cosine | linear | constant
      decay_steps=0,  # 0: decay over train.steps
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.1,  # on kernels and embeddings, by name (genvis/train/optimizer.py)
      clip_norm=1.0,  # 0: no clipping
      layer_decay=1.0,  # < 1: layer-wise lr decay (fine-tuning), the head at the full rate
  )
  c.eval = dict(
      every=250,  # 0: only at the end
      num_batches=20,
  )
  c.checkpoint = dict(
      every=500,  # 0: only at the end (and on SIGTERM)
      keep=3,  # the newest `keep` (>= 1; None: all) are kept
      async_save=True,
  )
  c.sample = dict(
      every=0,  # 0: only at the end
      num_samples=2,  # per prompt
      prompt="",  # "\n" in it stands for a newline
      prompt_file="",  # one prompt per line (blank lines skipped); used instead of prompt
      max_new_tokens=0,  # 0: fill the trained context (and one token sampled from its end)
      temperature=0.8,  # 0: greedy
      top_k=0,  # 0: off
      top_p=1.0,  # nucleus sampling; 1: off
      stop="",  # cut each sample at the first occurrence of this text ("\n\n": paragraphs)
  )
  c.mesh = dict(
      shape=(-1, 1, 1),  # (data, fsdp, tensor); -1 fills the remaining devices
      rules=DEFAULT_RULES,
  )
  c.distributed = dict(
      initialize="auto",  # auto: when the environment names a coordinator; yes; no
      coordinator_address="",
      num_processes=0,
      process_id=-1,
  )
  return c


def parse_variant(arg: str | None, defaults: dict) -> dict:
  """'size=tiny,data=file' -> {'size': 'tiny', 'data': 'file'} over `defaults`; a key not in
  `defaults` is an error naming it."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config variant {item!r}: expected key=value with key in "
                       f"{sorted(defaults)}")
    values[key] = value
  return values


def parse_overrides(items) -> dict:
  """Command-line `KEY=VALUE` strings (`--set model.num_layers=4`) as {key: value}; values
  are Python literals (8, 1e-4, True, (1, 2)) or else the string itself."""
  overrides = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UserError(f"--set {item!r}: expected KEY=VALUE")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def write_config(config, workdir: str) -> str:
  """The resolved config as workdir/config.json."""
  path = os.path.join(workdir, "config.json")
  resolved = json.loads(config.to_json_best_effort())
  atomic_files.write_text(path, json.dumps(resolved, indent=2, sort_keys=True))
  return path


def load_config(spec: str, overrides: dict | None = None):
  """'configs/gpt_lm.py:size=tiny' -> the locked ConfigDict, with dotted-key overrides
  ({"train.steps": 5}) applied: for tests, benchmarks and notebooks (main.py uses absl)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("genvis_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.lock()
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node:
      raise KeyError(f"config key {key!r} does not exist")
    node[leaf] = value
  return config

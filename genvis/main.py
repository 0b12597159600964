"""Entry point: `python -m genvis.main --config=configs/gpt_lm.py:size=tiny --workdir=runs/x`.

Flags: --mode=train|eval|sample and any config override, e.g. --config.train.steps=500.
A researcher's mistake (unknown key, missing file, bad shape) ends with one line on stderr
and exit status 2; a diverged run with exit status 1.
"""

import logging
import re
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str) -> dict:
  """Initialise (multi-process if asked), build the trainer and do `mode`."""
  from genvis.train import distributed  # pylint: disable=import-outside-toplevel
  distributed.maybe_initialize(config.distributed)
  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  trainer = Trainer(config, workdir)
  if mode == "train":
    return trainer.train()
  try:
    state = trainer.restore_latest()
  finally:
    trainer.checkpointer.close()
  step = int(state.step)
  params = trainer.shown_params(state)  # the EMA, when the run keeps one, as while training
  if mode == "eval":
    return {"step": step, **trainer.evaluate(params)}
  samples = trainer.sample(params, step)
  trainer.print_samples(samples, None)
  return {"step": step}


def describe_flag_error(error: Exception, argv: list[str]) -> str:
  """One line for a flag-parsing failure; names the override key when one is unknown."""
  raw = str(error).replace("\\n", "\n").replace("\\'", "'")
  lines = [line.strip() for line in raw.splitlines() if line.strip()] or [type(error).__name__]
  if isinstance(error, (AttributeError, KeyError)):
    missing = re.search(r"'(\w+)'", raw)
    hint = re.search(r'Did you mean "(\w+)"', raw)
    for arg in argv:
      key = arg[len("--config."):].split("=")[0] if arg.startswith("--config.") else ""
      if missing and missing.group(1) in key.split("."):
        return (f"unknown config key {key!r} (from {arg.split('=')[0]})"
                + (f"; did you mean {hint.group(1)!r}?" if hint else ""))
  if "Failed loading config file" in raw and len(lines) >= 4:
    return f"cannot load the config file {lines[2]}: {lines[3]}"
  if "Error whilst parsing config file" in raw:
    return f"in the config file: {lines[-1]}"
  return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with a bad override or config file reported in one line."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # config_flags defers a config file's load error to first use
    return remaining
  except Exception as e:  # pylint: disable=broad-except
    print(f"error: {describe_flag_error(e, argv)}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  from genvis.errors import UserError  # pylint: disable=import-outside-toplevel
  from genvis.train.trainer import TrainingDiverged, summary_json  # pylint: disable=import-outside-toplevel
  # Keep genvis' own INFO lines (compile time, resume step); Orbax and JAX chat through absl
  # and the "jax" logger at INFO ("Unable to initialize backend 'tpu'", every file closed).
  for noisy in ("absl", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  try:
    summary = run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1 if isinstance(e, TrainingDiverged) else 2)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print(summary_json(summary))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)

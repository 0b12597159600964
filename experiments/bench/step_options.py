"""XLA compiler options A/B on a train step, interleaved in one process.

  python experiments/bench/step_options.py --data ../shared/data/tinyshakespeare.txt \
      --variants '{"base": {}, "ftz": {"xla_cpu_ftz": true}}' [--config tiny] [--rounds 12]

This machine's speed drifts by 10-25 % from one minute to the next, so options timed in
separate processes cannot show a 5 % effect. Here every variant is compiled from the same
lowered step (`Trainer.compile_train_step(compiler_options)`), and the variants take turns,
20 steps on a fixed batch each, for --rounds rounds: a drift then hits them all alike. It
prints each variant's median ms a step and its ratio to the first variant's; the last line
is one JSON object.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# genvis before jax: its CPU malloc settings must precede JAX's threads (genvis/__init__.py).
import genvis  # pylint: disable=wrong-import-position,unused-import
import jax  # pylint: disable=wrong-import-position

import lm_shakespeare  # pylint: disable=wrong-import-position
from genvis.train.trainer import Trainer  # pylint: disable=wrong-import-position

STEPS_PER_TURN = 20


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
  parser.add_argument("--config", choices=sorted(lm_shakespeare.SETTINGS), default="tiny")
  parser.add_argument("--variants", required=True,
                      help='JSON {name: {xla option: value}}; the first is the baseline')
  parser.add_argument("--rounds", type=int, default=12)
  args = parser.parse_args()
  variants = json.loads(args.variants)

  config = lm_shakespeare.make_config(args.config, args.data, 0, 0)
  trainer = Trainer(config, tempfile.mkdtemp(prefix="step_options_"),
                    devices=jax.devices()[:1])
  steps = {name: trainer.compile_train_step(options) for name, options in variants.items()}
  states = {name: trainer.restore_or_init() for name in variants}
  batch = trainer.global_batch(trainer.task.train_batch(0))

  def turn(name, count):
    start = time.perf_counter()
    for _ in range(count):
      states[name], metrics = steps[name](states[name], batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / count * 1e3

  for name in variants:
    turn(name, 5)  # warm-up
  times = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name in variants:
      times[name].append(turn(name, STEPS_PER_TURN))

  baseline = statistics.median(times[next(iter(variants))])
  result = {}
  for name in variants:
    median = statistics.median(times[name])
    result[name] = {"median_ms": round(median, 3), "min_ms": round(min(times[name]), 3),
                    "ratio": round(median / baseline, 4)}
    print(f"{name:16s} {median:7.2f} ms a step (min {min(times[name]):.2f}), "
          f"{median / baseline:.3f}x the first")
  print(json.dumps({"config": args.config, "rounds": args.rounds, "variants": result}))


if __name__ == "__main__":
  main()

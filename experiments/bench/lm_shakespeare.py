"""nanoGPT's character-level Shakespeare benchmarks, genvis vs a PyTorch reference.

  python experiments/bench/lm_shakespeare.py --data ../shared/data/tinyshakespeare.txt --config tiny
  python experiments/bench/lm_shakespeare.py --data ../shared/data/tinyshakespeare.txt --config baby

--config tiny: nanoGPT's published CPU run (4 layers, 4 heads, width 128, context 64, batch 12,
  2000 iterations, lr 1e-3 cosine to 1e-4, warmup 100, beta2 0.99, no dropout). Trains, then
  reports the validation loss (first 90 % train / last 10 % val) and iterations/s of training
  alone (data + step; compilation and evaluation excluded).
--config baby: nanoGPT's "baby GPT" (6 layers, 6 heads, width 384, context 256, batch 64,
  dropout 0.2). Times 20 iterations after compilation: seconds/iteration and MFU against the
  measured CPU peak.
--reference also runs the PyTorch reference (experiments/bench/reference/torch_gpt.py) in the
  same process, after genvis, and reports genvis/reference ratios.

The last line printed is one JSON object.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # pylint: disable=wrong-import-position

from genvis import config_lib  # pylint: disable=wrong-import-position
from genvis.train import mfu  # pylint: disable=wrong-import-position
from genvis.train.trainer import Trainer  # pylint: disable=wrong-import-position

SETTINGS = {
    "tiny": dict(size="tiny", steps=2000, timed_steps=None, overrides={}),
    "baby": dict(size="small", steps=5000, timed_steps=20, overrides={"model.dropout": 0.2,
                                                            "model.attention_dropout": 0.2}),
}


def make_config(name: str, data_path: str, eval_batches: int):
  setting = SETTINGS[name]
  overrides = {
      "data.path": data_path,
      "train.steps": setting["steps"],
      "eval.num_batches": eval_batches,
      "train.progress_bar": False,
      "mesh.shape": (1, 1, 1),
      **setting["overrides"],
  }
  return config_lib.load_config(
      os.path.join(REPO, f"configs/gpt_lm.py:size={setting['size']},data=file"), overrides)


def run_genvis(name: str, data_path: str, workdir: str, eval_batches: int) -> dict:
  config = make_config(name, data_path, eval_batches)
  trainer = Trainer(config, workdir, devices=jax.devices()[:1])
  state = trainer.restore_or_init()
  start = time.perf_counter()
  train_step = trainer.compile_train_step()
  compile_s = time.perf_counter() - start
  timed = SETTINGS[name]["timed_steps"]
  steps = timed if timed else config.train.steps
  warmup = 2 if timed else 5  # excluded from the timing, as in the reference
  batch = lambda s: trainer.global_batch(trainer.task.train_batch(s))
  for step in range(warmup):
    state, metrics = train_step(state, batch(step))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for step in range(warmup, warmup + steps if timed else steps):
    state, metrics = train_step(state, batch(step))
    if step % 200 == 0:
      print(f"step {step}: loss {float(metrics['loss']):.4f}", flush=True)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  iterations = steps if timed else steps - warmup
  peak = mfu.measured_cpu_peak()
  flops_per_step = trainer.task.flops_per_step(trainer.num_params)
  result = {
      "it_per_s": iterations / seconds,
      "s_per_it": seconds / iterations,
      "mfu": iterations * flops_per_step / seconds / peak,
      "peak_flops": peak,
      "compile_s": compile_s,
      "params": trainer.num_params,
      "val_loss": None,
  }
  if not timed:
    result["val_loss"] = trainer.evaluate(state.params)["val_loss"]
  return result


def run_reference(name: str, data_path: str, peak: float) -> dict:
  sys.path.insert(0, os.path.join(REPO, "experiments/bench/reference"))
  import torch_gpt  # pylint: disable=import-outside-toplevel
  return torch_gpt.run(name, data_path, peak_flops=peak)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
  parser.add_argument("--config", choices=sorted(SETTINGS), default="tiny")
  parser.add_argument("--workdir", default="", help="default: a fresh temporary folder")
  parser.add_argument("--eval-batches", type=int, default=200)
  parser.add_argument("--reference", action="store_true", help="also run the PyTorch one")
  args = parser.parse_args()
  if not os.path.isfile(args.data):
    sys.exit(f"error: --data {args.data!r}: no such file")
  import tempfile  # pylint: disable=import-outside-toplevel
  workdir = args.workdir or tempfile.mkdtemp(prefix=f"bench_{args.config}_")
  result = {"config": args.config, "device": jax.devices()[0].device_kind,
            **run_genvis(args.config, args.data, workdir, args.eval_batches)}
  if args.reference:
    reference = run_reference(args.config, args.data, result["peak_flops"])
    result["reference"] = reference
    result["speedup_vs_reference"] = result["it_per_s"] / reference["it_per_s"]
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()

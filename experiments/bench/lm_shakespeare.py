"""nanoGPT's character-level Shakespeare benchmarks, genvis vs a PyTorch reference.

  python experiments/bench/lm_shakespeare.py --data ../shared/data/tinyshakespeare.txt --config tiny
  python experiments/bench/lm_shakespeare.py --data ../shared/data/tinyshakespeare.txt --config baby

--config tiny: nanoGPT's published CPU run (4 layers, 4 heads, width 128, context 64, batch 12,
  2000 iterations, lr 1e-3 cosine to 1e-4, warmup 100, beta2 0.99, no dropout). Trains, then
  reports the validation loss (first 90 % train / last 10 % val) and iterations/s of training
  alone (data + step; compilation and evaluation excluded).
--config baby: nanoGPT's "baby GPT" (6 layers, 6 heads, width 384, context 256, batch 64,
  dropout 0.2), the batch computed as 16 microbatches of 4 within each step. Times 20
  iterations after compilation: seconds/iteration and MFU against the measured CPU peak.
--reference also runs the PyTorch reference (experiments/bench/reference/torch_gpt.py) in a
  process of its own (with malloc and threads as the reference sets them, not as genvis
  does), taking turns with genvis: each trains a chunk of iterations (tiny 100, baby 5) while
  the other waits, so that this machine's drift (10-25 % over minutes) hits both alike, and
  reports genvis/reference ratios. --seed seeds both (the reference's own default seed is
  1337; here both default to 0).

The last line printed is one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# genvis before jax: its CPU malloc settings must precede JAX's threads (genvis/__init__.py).
import genvis  # pylint: disable=wrong-import-position,unused-import
import jax  # pylint: disable=wrong-import-position

from genvis import config_lib  # pylint: disable=wrong-import-position
from genvis.train import mfu  # pylint: disable=wrong-import-position
from genvis.train.trainer import Trainer  # pylint: disable=wrong-import-position

SETTINGS = {
    "tiny": dict(size="tiny", steps=2000, timed_steps=None, chunk=100, overrides={}),
    # The 64-sequence batch goes through the step as 16 microbatches of 4 (a lax.scan inside
    # the one jitted step; the same mean gradient). Their temporaries fit under the 1 GiB up
    # to which malloc recycles freed blocks (genvis/train/host_memory.py); the whole batch's
    # did not, and were mapped and page-faulted in afresh every step: 10.9 s/it, 1.4 million
    # faults and 5.9 GB peak RSS, against 8.0 s/it, no faults and 1.4 GB.
    "baby": dict(size="small", steps=5000, timed_steps=20, chunk=5,
                 overrides={"model.dropout": 0.2, "model.attention_dropout": 0.2,
                            "train.grad_accum_steps": 16}),
}


def make_config(name: str, data_path: str, eval_batches: int, seed: int = 0):
  setting = SETTINGS[name]
  overrides = {
      "seed": seed,
      "data.path": data_path,
      "train.steps": setting["steps"],
      "eval.num_batches": eval_batches,
      "train.progress_bar": False,
      "mesh.shape": (1, 1, 1),
      **setting["overrides"],
  }
  return config_lib.load_config(
      os.path.join(REPO, f"configs/gpt_lm.py:size={setting['size']},data=file"), overrides)


def run_genvis(name: str, data_path: str, workdir: str, eval_batches: int, seed: int,
               pause=None) -> dict:
  """Trains and times genvis; `pause()`, when given, is called (its time excluded) before the
  first timed step and after every chunk of timed steps but the last."""
  config = make_config(name, data_path, eval_batches, seed)
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
  iterations = steps if timed else steps - warmup
  chunk = SETTINGS[name]["chunk"]
  if pause:
    pause()
  seconds, start = 0.0, time.perf_counter()
  for i, step in enumerate(range(warmup, warmup + iterations), 1):
    state, metrics = train_step(state, batch(step))
    if step % 200 == 0:
      print(f"step {step}: loss {float(metrics['loss']):.4f}", flush=True)
    if pause and i % chunk == 0 and i < iterations:
      jax.block_until_ready(metrics)  # nothing of ours runs while the reference does
      seconds += time.perf_counter() - start
      pause()
      start = time.perf_counter()
  jax.block_until_ready((state, metrics))
  seconds += time.perf_counter() - start
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


class Reference:
  """The PyTorch reference in a process of its own, taking turns with genvis: `pause()` lets
  it train its next chunk and returns when it has; `finish()` lets it run to the end and
  returns its result, or {"error": ...} when it gave none (genvis's figures still print)."""

  def __init__(self, name: str, data_path: str, peak: float, seed: int):
    command = [sys.executable, os.path.join(REPO, "experiments/bench/reference/torch_gpt.py"),
               "--data", data_path, "--config", name, "--seed", str(seed),
               "--peak-flops", repr(peak), "--interleave", str(SETTINGS[name]["chunk"])]
    self.child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
    self.waiting = False  # at a pause of its own, for our go
    self.result = None

  def pause(self):
    if self.result is not None:
      return
    if self.waiting:
      self.child.stdin.write("go\n")
      self.child.stdin.flush()
    for line in self.child.stdout:  # its progress, as it comes, up to its next pause or end
      line = line.strip()
      try:
        message = json.loads(line) if line.startswith("{") else None
      except json.JSONDecodeError:
        message = None
      if message is None:
        print(f"reference: {line}", flush=True)
      elif "chunk_s" in message:
        self.waiting = True
        return
      else:
        self.result = message
        return
    self.result = {"error": f"the reference exited with {self.child.wait()} mid-run"}

  def finish(self) -> dict:
    self.pause()
    self.child.stdin.close()
    self.child.wait()
    return self.result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
  parser.add_argument("--config", choices=sorted(SETTINGS), default="tiny")
  parser.add_argument("--workdir", default="", help="default: a fresh temporary folder")
  parser.add_argument("--eval-batches", type=int, default=200)
  parser.add_argument("--reference", action="store_true", help="also run the PyTorch one")
  parser.add_argument("--seed", type=int, default=0, help="of the init, batches and dropout")
  args = parser.parse_args()
  if not os.path.isfile(args.data):
    sys.exit(f"error: --data {args.data!r}: no such file")
  import tempfile  # pylint: disable=import-outside-toplevel
  workdir = args.workdir or tempfile.mkdtemp(prefix=f"bench_{args.config}_")
  reference = (Reference(args.config, args.data, mfu.measured_cpu_peak(), args.seed)
               if args.reference else None)
  result = {"config": args.config, "device": jax.devices()[0].device_kind,
            "seed": args.seed,
            **run_genvis(args.config, args.data, workdir, args.eval_batches, args.seed,
                         pause=reference.pause if reference else None)}
  if reference:
    result["reference"] = reference_result = reference.finish()
    if "it_per_s" in reference_result:
      result["speedup_vs_reference"] = result["it_per_s"] / reference_result["it_per_s"]
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()

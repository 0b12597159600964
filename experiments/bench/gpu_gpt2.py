"""GPT-2 124M training throughput and MFU on one accelerator (bf16 compute, fused attention).

  python experiments/bench/gpu_gpt2.py                 # GPU: GPT-2 124M, context 1024
  python experiments/bench/gpu_gpt2.py --smoke         # any machine: a tiny model, 3 steps

The full run trains configs/gpt_lm.py:size=gpt2 (12 layers, width 768, 12 heads, context
1024, vocabulary 50257) with bfloat16 compute and float32 parameters, attention through
cuDNN's fused flash kernel (`model.attention_impl=cudnn`; XLA's on other platforms), on
batches of --batch sequences. Token ids are uniform over the vocabulary (--tokens random, as in
the PyTorch reference, experiments/bench/reference/torch_gpt2_gpu.py) or the embedded corpus's
character ids (--tokens corpus: about 100 distinct ids, so many tokens share an embedding
row's gradient; on an H200 both took the same time).

It times --steps train steps after compilation and --warmup steps, and prints tokens/s and
MFU = achieved FLOPs (6N + 12·L·d·T per token, genvis/models/gpt.py) over the device's dense
bf16 peak (genvis/train/mfu.py: H100/H200 989 TFLOP/s). Goal: >= 45 % on an H100 (nanoGPT's
published A100 run works out near 29 %). The last line is one JSON object.

Measured on an H200 (2026-11-27, batch 16): 35.1 ms a step, 467k tokens/s, 40 % MFU, and
1.01x the PyTorch reference's tokens/s on the same machine (experiments/results/lm/README.md).
"""

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from genvis import config_lib  # pylint: disable=wrong-import-position
from genvis.train import mfu  # pylint: disable=wrong-import-position
from genvis.train.trainer import Trainer  # pylint: disable=wrong-import-position

SMOKE = {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 2,
         "model.max_len": 64, "model.vocab_size": 512}


def make_config(args):
  on_gpu = jax.devices()[0].platform == "gpu"
  overrides = {
      "model.dtype": "bfloat16",
      "model.dropout": 0.0,
      "model.vocab_size": args.vocab,
      "model.attention_impl": "cudnn" if on_gpu else "xla",
      "model.remat": args.remat,
      "data.batch_size": args.batch,
      "eval.num_batches": 0,
      "sample.num_samples": 0,
      "mesh.shape": (1, 1, 1),
  }
  if args.smoke:
    overrides.update({**SMOKE, "data.batch_size": 2})
  return config_lib.load_config(os.path.join(REPO, "configs/gpt_lm.py:size=gpt2"), overrides)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--vocab", type=int, default=50257, help="50304: nanoGPT's padding")
  parser.add_argument("--remat", default="none", choices=["none", "dots", "full"])
  parser.add_argument("--tokens", default="random", choices=["random", "corpus"])
  parser.add_argument("--xla-options", default="{}",
                      help='JSON XLA options for the step\'s compile, e.g. '
                           '\'{"xla_gpu_enable_triton_gemm": false}\'')
  parser.add_argument("--smoke", action="store_true", help="tiny model, 3 steps (tests)")
  args = parser.parse_args()
  if args.smoke:
    args.steps, args.warmup = 3, 1

  config = make_config(args)
  trainer = Trainer(config, tempfile.mkdtemp(prefix="gpu_gpt2_"), devices=jax.devices()[:1])
  state = trainer.restore_or_init()
  start = time.perf_counter()
  xla_options = json.loads(args.xla_options)
  train_step = trainer.compile_train_step(xla_options)
  compile_s = time.perf_counter() - start
  def batch(step):
    if args.tokens == "corpus":
      return trainer.global_batch(trainer.task.train_batch(step))
    ids = np.random.default_rng(step).integers(
        0, config.model.vocab_size, (config.data.batch_size, trainer.task.seq_len + 1), np.int32)
    return trainer.global_batch({"inputs": ids[:, :-1], "targets": ids[:, 1:]})
  for step in range(args.warmup):
    state, metrics = train_step(state, batch(step))
  jax.block_until_ready((state, metrics))
  batches = [batch(step) for step in range(args.warmup, args.warmup + args.steps)]
  start = time.perf_counter()
  for step_batch in batches:  # batches built beforehand: time the device work alone
    state, metrics = train_step(state, step_batch)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start

  device = jax.devices()[0]
  peak = mfu.device_peak_flops(device)
  flops_per_step = trainer.task.flops_per_step(trainer.num_params)
  result = {
      "device": device.device_kind,
      "params": trainer.num_params,
      "batch": config.data.batch_size,
      "context": trainer.task.seq_len,
      "attention": config.model.attention_impl,
      "tokens": args.tokens,
      "vocab": config.model.vocab_size,
      "xla_options": xla_options,
      "compile_s": compile_s,
      "s_per_step": seconds / args.steps,
      "tokens_per_s": args.steps * trainer.task.tokens_per_step() / seconds,
      "mfu": args.steps * flops_per_step / seconds / peak if peak else None,
      "peak_flops": peak,
      "final_loss": float(metrics["loss"]),
  }
  print(f"{result['device']}: {result['tokens_per_s']:,.0f} tokens/s, "
        f"MFU {100 * result['mfu']:.1f}% of {peak / 1e12:.3g} TFLOP/s" if peak else
        f"{result['device']}: {result['tokens_per_s']:,.0f} tokens/s (no peak known)")
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()

"""PyTorch reference for experiments/bench/gpu_gpt2.py: GPT-2 124M training tokens/s on one GPU.

  python experiments/bench/reference/torch_gpt2_gpu.py [--batch 16] [--steps 20]

nanoGPT's GPU recipe on torch_gpt.py's model at GPT-2 size (12 layers, width 768, 12 heads,
context 1024, vocabulary 50257, biases on, tied head): bfloat16 autocast, torch.compile,
flash attention through scaled_dot_product_attention, fused AdamW with weight decay on >=2-D
parameters, gradient clipping at 1.0. Token ids are random: the time does not depend on them.
It times --steps steps after --warmup steps (which include the compile) with the GPU
synchronised around the timed loop. The last line is one JSON object.
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_gpt  # pylint: disable=wrong-import-position

GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0,
            learning_rate=6e-4, weight_decay=0.1, beta2=0.95)
VOCAB = 50257


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=16, help="sequences of 1024 tokens")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--no-compile", action="store_true")
  args = parser.parse_args()

  torch.manual_seed(0)
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch_gpt.BIAS = True  # GPT-2 has biases (nanoGPT's bias=True for GPT-2 weights)
  model = torch_gpt.GPT(VOCAB, GPT2).cuda()
  optimizer = torch_gpt.make_optimizer(model, GPT2, fused=True)  # nanoGPT's on CUDA
  step_model = model if args.no_compile else torch.compile(model)

  def batch():
    x = torch.randint(0, VOCAB, (args.batch, GPT2["block_size"] + 1), device="cuda")
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()

  def step(x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
      loss = step_model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  start = time.perf_counter()
  for _ in range(args.warmup):
    loss = step(*batch())
  torch.cuda.synchronize()
  warmup_s = time.perf_counter() - start
  batches = [batch() for _ in range(args.steps)]
  torch.cuda.synchronize()
  start = time.perf_counter()
  for x, y in batches:
    loss = step(x, y)
  torch.cuda.synchronize()
  seconds = time.perf_counter() - start

  tokens = args.steps * args.batch * GPT2["block_size"]
  print(json.dumps({
      "device": torch.cuda.get_device_name(), "torch": torch.__version__,
      "params": model.num_params(), "batch": args.batch, "context": GPT2["block_size"],
      "compiled": not args.no_compile, "warmup_s": warmup_s,
      "s_per_step": seconds / args.steps, "tokens_per_s": tokens / seconds,
      "final_loss": float(loss),
  }, sort_keys=True))


if __name__ == "__main__":
  main()

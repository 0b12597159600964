"""Decoding speed: compiled KV-cached generation vs recomputing the prefix vs HF `generate`.

  python experiments/bench/decode.py                      # the CPU "small" size, 512 tokens
  python experiments/bench/decode.py --new_tokens 64 --layers 2 --width 64   # a smoke run

One set of weights serves all three: a randomly initialised transformers GPT2LMHeadModel of
the "small" shape (6 layers, width 384, 6 heads; context 1024 so 512 new tokens fit; a
4096-token vocabulary as `configs/gpt_lm.py:size=small,tok=bpe` gives), imported into genvis
through genvis/convert. Each decodes greedily from the same prompt, batch 1:

- cached:    genvis.sampling.generate — one jitted function, prompt prefilled in one pass,
             then one single-position forward per token against the KV cache;
- recompute: no cache; every token re-runs the model over the whole prefix so far (jitted
             per 64-token bucket of prefix length, so it is not charged for a fixed
             full-length buffer nor for a compile per length);
- hf:        transformers' `model.generate(do_sample=False, use_cache=True)`, float32 on
             the same CPU threads.

Compilation and a warm-up call are excluded; each figure is the best of --repeats timed
runs, the three decoders taking turns in each round (this CPU's speed drifts by ~20 % over
minutes). Greedy tokens are compared across the three as a sanity check (float32 round-off may
flip a near-tie late in a long random-weight sequence, so agreement is reported, not
asserted). The last line is one JSON object.
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

# genvis before jax: its CPU malloc settings must precede JAX's threads (genvis/__init__.py).
import genvis  # pylint: disable=wrong-import-position,unused-import
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from genvis.convert import hf_gpt  # pylint: disable=wrong-import-position
from genvis.models import gpt  # pylint: disable=wrong-import-position
from genvis.sampling import generate  # pylint: disable=wrong-import-position

BUCKET = 64


def build_models(args):
  """(HF model, genvis model, genvis params) with identical weights."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(args.seed)
  hf_config = transformers.GPT2Config(
      n_layer=args.layers, n_embd=args.width, n_head=args.heads, n_positions=args.context,
      vocab_size=args.vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 is outside this vocabulary
  hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
  fields, params = hf_gpt.from_hf(hf_model.state_dict(), hf_config.to_dict())
  model = gpt.GPT(gpt.GPTConfig(**fields))
  # Copies owned by XLA: device_put may alias the numpy views of torch's tensors as they
  # are, which measured a few % slower than XLA's own (aligned) buffers.
  params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params)
  return hf_model, model, params


def best_times(runs: dict, repeats: int) -> tuple[dict, dict]:
  """({name: best seconds}, {name: output}) over `repeats` rounds. The decoders take turns
  within each round, so a slow spell of a shared machine hits all of them alike."""
  outputs = {name: run() for name, run in runs.items()}  # warm-up: compilation, caches
  best = {name: float("inf") for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      outputs[name] = run()
      best[name] = min(best[name], time.perf_counter() - start)
  return best, outputs


def cached_decode(model, params, prompt, new_tokens):
  tokens = generate.generate(model, params, jnp.asarray(prompt), jax.random.key(0),
                             max_new_tokens=new_tokens, temperature=0.0)
  return np.asarray(jax.block_until_ready(tokens))[0, prompt.shape[1]:]


def recompute_decode(next_token, prompt, new_tokens):
  prompt_len = prompt.shape[1]
  tokens = np.zeros((1, prompt_len + new_tokens), np.int32)
  tokens[:, :prompt_len] = prompt
  for t in range(prompt_len, prompt_len + new_tokens):
    width = min(-(-t // BUCKET) * BUCKET, tokens.shape[1])  # the prefix, rounded up
    tokens[0, t] = int(next_token(jnp.asarray(tokens[:, :width]), t - 1))
  return tokens[0, prompt_len:]


def make_recompute_step(model, params):
  """The greedy token after position `last` of a prefix buffer (compiled once per width)."""
  @jax.jit
  def next_token(tokens, last):
    return jnp.argmax(model.apply({"params": params}, tokens)[0, last])
  return next_token


def hf_decode(hf_model, prompt, new_tokens):
  import torch  # pylint: disable=import-outside-toplevel
  with torch.inference_mode():
    out = hf_model.generate(torch.as_tensor(prompt, dtype=torch.long), do_sample=False,
                            use_cache=True, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, pad_token_id=0,
                            attention_mask=torch.ones(prompt.shape, dtype=torch.long))
  return out[0, prompt.shape[1]:].numpy()


def agreement(a, b) -> float:
  """Fraction of positions before the first disagreement (1.0: identical)."""
  differs = np.flatnonzero(np.asarray(a) != np.asarray(b))
  return 1.0 if len(differs) == 0 else differs[0] / len(a)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--new_tokens", type=int, default=512)
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--vocab", type=int, default=4096)
  parser.add_argument("--context", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--skip_hf", action="store_true", help="only genvis' two decoders")
  args = parser.parse_args()

  hf_model, model, params = build_models(args)
  prompt = np.random.default_rng(args.seed).integers(
      0, args.vocab, size=(1, args.prompt_len)).astype(np.int32)
  n = args.new_tokens
  print(f"GPT-2 shape: {args.layers} layers, width {args.width}, {args.heads} heads, "
        f"vocab {args.vocab}; prompt {args.prompt_len} tokens, {n} new tokens, batch 1, "
        f"{jax.devices()[0].platform}")

  next_token = make_recompute_step(model, params)
  runs = {"cached": lambda: cached_decode(model, params, prompt, n),
          "recompute": lambda: recompute_decode(next_token, prompt, n)}
  if not args.skip_hf:
    runs["hf"] = lambda: hf_decode(hf_model, prompt, n)
  seconds, tokens = best_times(runs, args.repeats)
  result = {"new_tokens": n, "repeats": args.repeats}
  for name in runs:
    result[f"{name}_tok_per_s"] = n / seconds[name]
    if name != "cached":
      result[f"cached_vs_{name}"] = seconds[name] / seconds["cached"]
      result[f"agreement_{name}"] = agreement(tokens["cached"], tokens[name])
  for name in ("cached", "recompute", "hf"):
    if f"{name}_tok_per_s" in result:
      print(f"{name:>10}: {result[f'{name}_tok_per_s']:9.1f} tokens/s")
  print(f"cached / recompute = {result['cached_vs_recompute']:.1f}x (goal >= 10x)"
        + (f";  cached / HF generate = {result['cached_vs_hf']:.2f}x (goal >= 2x)"
           if "cached_vs_hf" in result else ""))
  print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
  main()

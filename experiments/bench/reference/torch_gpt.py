"""PyTorch reference for nanoGPT's character-level Shakespeare setup.

Written from scratch as the side-by-side baseline for the JAX benchmark: same
architecture (GPT-2 style, pre-LN, tied lm head) and the same training recipe
(AdamW, decoupled weight decay on >=2-D params, clip 1.0, warmup + cosine).
Run: python torch_gpt.py --data tinyshakespeare.txt --config tiny
With --interleave N it pauses before its first timed iteration and after every N timed
ones: it prints {"chunk_s": seconds of those N} and waits for a line on stdin, so that
experiments/bench/lm_shakespeare.py can take turns with it.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Mirrors nanoGPT's README CPU command ("tiny") and config/train_shakespeare_char.py
# ("baby"). `timed_only` configs skip the val loss and time a fixed iteration count.
CONFIGS = {
  'tiny': dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
               dropout=0.0, max_iters=2000, lr_decay_iters=2000,
               learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
               weight_decay=0.1, eval_iters=200, skip_iters=5,
               timed_only=False),
  'baby': dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64,
               dropout=0.2, max_iters=20, lr_decay_iters=5000,
               learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99,
               weight_decay=0.1, eval_iters=0, skip_iters=2, timed_only=True),
}
BIAS = False  # no Linear/LayerNorm biases: nanoGPT's train.py default (bias=False).
GRAD_CLIP = 1.0


class SelfAttention(nn.Module):
  def __init__(self, d, n_head, dropout):
    super().__init__()
    self.n_head, self.dropout = n_head, dropout
    self.c_attn = nn.Linear(d, 3 * d, bias=BIAS)
    self.c_proj = nn.Linear(d, d, bias=BIAS)
    self.resid_drop = nn.Dropout(dropout)

  def forward(self, x):
    B, T, C = x.shape
    q, k, v = self.c_attn(x).split(C, dim=2)
    # (B, T, C) -> (B, heads, T, head_dim) for SDPA.
    q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
               for t in (q, k, v))
    y = F.scaled_dot_product_attention(
      q, k, v, is_causal=True,
      dropout_p=self.dropout if self.training else 0.0)
    y = y.transpose(1, 2).contiguous().view(B, T, C)
    return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
  def __init__(self, d, dropout):
    super().__init__()
    self.c_fc = nn.Linear(d, 4 * d, bias=BIAS)
    self.c_proj = nn.Linear(4 * d, d, bias=BIAS)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
  def __init__(self, d, n_head, dropout):
    super().__init__()
    self.ln_1 = nn.LayerNorm(d, bias=BIAS)
    self.attn = SelfAttention(d, n_head, dropout)
    self.ln_2 = nn.LayerNorm(d, bias=BIAS)
    self.mlp = MLP(d, dropout)

  def forward(self, x):
    x = x + self.attn(self.ln_1(x))
    return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
  def __init__(self, vocab_size, cfg):
    super().__init__()
    d, L = cfg['n_embd'], cfg['n_layer']
    self.wte = nn.Embedding(vocab_size, d)
    self.wpe = nn.Embedding(cfg['block_size'], d)
    self.drop = nn.Dropout(cfg['dropout'])
    self.blocks = nn.ModuleList(
      Block(d, cfg['n_head'], cfg['dropout']) for _ in range(L))
    self.ln_f = nn.LayerNorm(d, bias=BIAS)
    self.lm_head = nn.Linear(d, vocab_size, bias=False)
    self.lm_head.weight = self.wte.weight  # weight tying
    self.apply(self._init)
    # GPT-2: scale residual-stream projections by depth so activations stay O(1).
    for name, p in self.named_parameters():
      if name.endswith('c_proj.weight'):
        nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L))

  @staticmethod
  def _init(m):
    if isinstance(m, (nn.Linear, nn.Embedding)):
      nn.init.normal_(m.weight, 0.0, 0.02)
    if isinstance(m, nn.Linear) and m.bias is not None:
      nn.init.zeros_(m.bias)

  def num_params(self):
    # Position embedding excluded, as in nanoGPT's MFU estimate; the tied
    # lm head is counted once (parameters() deduplicates).
    return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()

  def forward(self, idx, targets):
    T = idx.shape[1]
    pos = torch.arange(T, device=idx.device)
    x = self.drop(self.wte(idx) + self.wpe(pos))
    for block in self.blocks:
      x = block(x)
    logits = self.lm_head(self.ln_f(x))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def load_data(path):
  with open(path, 'r', encoding='utf-8') as f:
    text = f.read()
  chars = sorted(set(text))
  stoi = {c: i for i, c in enumerate(chars)}
  data = np.array([stoi[c] for c in text], dtype=np.int64)
  n = int(0.9 * len(data))
  return data[:n], data[n:], len(chars)


def get_batch(data, rng, B, T):
  # Same as nanoGPT's torch.randint(len(data) - T): i in [0, len - T - 1].
  ix = rng.integers(0, len(data) - T, size=B)
  x = np.stack([data[i:i + T] for i in ix])
  y = np.stack([data[i + 1:i + T + 1] for i in ix])
  return torch.from_numpy(x), torch.from_numpy(y)


def get_lr(it, c):
  if it < c['warmup_iters']:
    return c['learning_rate'] * (it + 1) / (c['warmup_iters'] + 1)
  if it > c['lr_decay_iters']:
    return c['min_lr']
  ratio = (it - c['warmup_iters']) / (c['lr_decay_iters'] - c['warmup_iters'])
  coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
  return c['min_lr'] + coeff * (c['learning_rate'] - c['min_lr'])


def make_optimizer(model, c, fused=None):
  params = [p for p in model.parameters() if p.requires_grad]
  groups = [
    {'params': [p for p in params if p.dim() >= 2],
     'weight_decay': c['weight_decay']},
    {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0},
  ]
  return torch.optim.AdamW(groups, lr=c['learning_rate'],
                           betas=(0.9, c['beta2']), eps=1e-8, fused=fused)


def measure_peak_flops(n=2048, reps=10):
  """Best-of float32 matmul throughput, the fallback MFU denominator."""
  a, b = torch.randn(n, n), torch.randn(n, n)
  torch.matmul(a, b)  # warm up the BLAS thread pool
  best = float('inf')
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.matmul(a, b)
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


@torch.no_grad()
def val_batch_losses(model, data, rng, c) -> np.ndarray:
  """The loss of each of `eval_iters` random validation batches."""
  model.eval()  # dropout off, as in nanoGPT's estimate_loss
  losses = [model(*get_batch(data, rng, c['batch_size'], c['block_size'])).item()
            for _ in range(c['eval_iters'])]
  model.train()
  return np.asarray(losses)


def spread_of_20_batch_means(losses: np.ndarray) -> dict:
  """How far an estimate from 20 batches (nanoGPT's README CPU command, --eval_iters=20)
  strays: the std and range of the means of consecutive groups of 20."""
  means = losses[:len(losses) // 20 * 20].reshape(-1, 20).mean(axis=1)
  return {'val_loss_20_batch_std': float(means.std()), 'val_loss_20_batch_min':
          float(means.min()), 'val_loss_20_batch_max': float(means.max())}


def run(config_name: str, data_path: str, *, seed: int = 1337,
        peak_flops: float | None = None, max_iters: int | None = None,
        eval_iters: int | None = None, log=print, pause=None, chunk: int = 0) -> dict:
  """Trains and times; `pause(seconds or None)`, when given, is called before the first
  timed iteration and after every `chunk` timed ones but the last."""
  c = dict(CONFIGS[config_name])
  if max_iters is not None:
    c['max_iters'] = max_iters
  if eval_iters is not None:
    c['eval_iters'] = eval_iters
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  train, val, vocab = load_data(data_path)
  model = GPT(vocab, c)
  model.train()
  opt = make_optimizer(model, c)
  B, T = c['batch_size'], c['block_size']
  skip, total = c['skip_iters'], c['skip_iters'] + c['max_iters']
  if not c['timed_only']:
    skip, total = min(skip, c['max_iters'] - 1), c['max_iters']
  log(f'{config_name}: {model.num_params() / 1e6:.2f}M params, '
      f'{total} iters ({skip} untimed warm-up)')

  timed = []  # per-iteration seconds after warm-up
  for it in range(total):
    if pause and it == skip:
      pause(None)
    t0 = time.perf_counter()
    for g in opt.param_groups:
      g['lr'] = get_lr(it, c)
    x, y = get_batch(train, rng, B, T)
    loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    dt = time.perf_counter() - t0  # CPU eager: step has finished here
    if it >= skip:
      timed.append(dt)
      if pause and len(timed) % chunk == 0 and it < total - 1:
        pause(sum(timed[-chunk:]))
    if it % 100 == 0 or it == total - 1:
      log(f'iter {it}: loss {loss.item():.4f}, {dt * 1000:.1f} ms')

  s_per_it = float(np.mean(timed))
  val_metrics = {'val_loss': None}
  if not c['timed_only']:
    losses = val_batch_losses(model, val, rng, c)
    val_metrics['val_loss'] = float(losses.mean())
    if len(losses) >= 40:
      val_metrics.update(spread_of_20_batch_means(losses))
  if peak_flops is None:
    peak_flops = measure_peak_flops()
  L, d = c['n_layer'], c['n_embd']
  flops_per_token = 6 * model.num_params() + 12 * L * d * T
  mfu = flops_per_token * B * T / s_per_it / peak_flops
  return {'config': config_name, **val_metrics,
          'it_per_s': 1.0 / s_per_it, 's_per_it': s_per_it, 'mfu': mfu,
          'params': model.num_params(), 'iters': total,
          # Median is robust to stalls from other tenants on a shared host.
          'timed_iters': len(timed), 'median_s_per_it': float(np.median(timed))}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', required=True)
  p.add_argument('--config', default='tiny', choices=sorted(CONFIGS))
  p.add_argument('--max-iters', type=int, default=None)
  p.add_argument('--seed', type=int, default=1337)
  p.add_argument('--eval-iters', type=int, default=None,
                 help='validation batches (default 200); from 40 on, the output also gives '
                      'the spread of 20-batch estimates')
  p.add_argument('--peak-flops', type=float, default=None,
                 help='for the MFU (default: measured here)')
  p.add_argument('--interleave', type=int, default=0,
                 help='pause every N timed iterations for a line on stdin')
  a = p.parse_args()

  def pause(seconds):
    print(json.dumps({'chunk_s': seconds}), flush=True)
    if not sys.stdin.readline():  # the driving process is gone
      sys.exit('stdin closed while paused')

  out = run(a.config, a.data, seed=a.seed, peak_flops=a.peak_flops,
            max_iters=a.max_iters, eval_iters=a.eval_iters, pause=pause if a.interleave else None,
            chunk=a.interleave)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()

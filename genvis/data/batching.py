"""Deterministic global batches: a batch is a pure function of (seed, step).

There is no iterator state to checkpoint: a resumed run at step s draws exactly the batch an
uninterrupted run drew at step s. Each process materialises only its own rows of the global
batch (rows [p * B/P, (p + 1) * B/P) for process p of P); the trainer assembles the global
`jax.Array` from the per-process pieces.
"""

import numpy as np

from genvis.errors import UserError


def process_rows(global_batch: int, process_index: int, process_count: int) -> slice:
  if global_batch % process_count:
    raise UserError(f"config.data.batch_size={global_batch} is not divisible by the "
                    f"{process_count} processes")
  per_process = global_batch // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


class TokenWindows:
  """Random windows of `seq_len + 1` tokens from one long token stream (nanoGPT's sampler).

  The window starts for step s come from a generator seeded with (seed, s), so they are the
  same on every process and every run; a process slices out its own rows before gathering.
  """

  def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int,
               name: str = "data"):
    if len(tokens) < seq_len + 1:
      raise UserError(f"{name} has {len(tokens)} tokens, fewer than one window of "
                      f"seq_len + 1 = {seq_len + 1}; use more text or a shorter model.max_len")
    self.tokens = tokens
    self.seq_len = seq_len
    self.global_batch = global_batch
    self.seed = seed

  def starts(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    # A window of seq_len + 1 tokens may start anywhere up to len - seq_len - 1.
    return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    starts = self.starts(step)[process_rows(self.global_batch, process_index, process_count)]
    windows = np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts])
    return {"inputs": windows[:, :-1].astype(np.int32),
            "targets": windows[:, 1:].astype(np.int32)}

"""Deterministic global batches: a batch is a pure function of (seed, step).

There is no iterator state to checkpoint: a resumed run at step s draws exactly the batch an
uninterrupted run drew at step s. Each process materialises only its own rows of the global
batch (rows [p * B/P, (p + 1) * B/P) for process p of P); the trainer assembles the global
`jax.Array` from the per-process pieces.
"""

import math

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


class ExampleOrder:
  """Which examples of a finite dataset make up each global batch.

  Training: example i of the global stream is entry i % N of a permutation seeded with
  (seed, epoch = i // N), so every epoch sees each example once and batch s is a pure function
  of (seed, s). Evaluation walks the examples in order, ceil(N / B) batches; the tail of the
  last one is padded with example 0 at weight 0, so every example counts once and none twice.
  """

  def __init__(self, num_examples: int, global_batch: int, seed: int, name: str = "data"):
    if num_examples == 0:
      raise UserError(f"{name} has no examples")
    self.num_examples = num_examples
    self.global_batch = global_batch
    self.seed = seed
    self._permutations = {}

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) > 4:  # a step touches at most a few epochs
        self._permutations.clear()
      rng = np.random.default_rng([self.seed, epoch])
      self._permutations[epoch] = rng.permutation(self.num_examples)
    return self._permutations[epoch]

  def train_indices(self, step: int) -> np.ndarray:
    """The example indices of global training batch `step`."""
    positions = step * self.global_batch + np.arange(self.global_batch)
    return np.array([self._permutation(p // self.num_examples)[p % self.num_examples]
                     for p in positions], np.int64)

  @property
  def num_eval_batches(self) -> int:
    return math.ceil(self.num_examples / self.global_batch)

  def eval_indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, 1.0 for a real example / 0.0 for padding) of held-out batch
    `index` of `num_eval_batches`: examples [index * B, (index + 1) * B)."""
    positions = index * self.global_batch + np.arange(self.global_batch)
    real = positions < self.num_examples
    return np.where(real, positions, 0), real.astype(np.float32)

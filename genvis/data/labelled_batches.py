"""Deterministic batches of labelled token sequences, padded to one length.

A batch is {"tokens": [B, T] int32 (padded with 0 after each sequence), "lengths": [B] int32
(real tokens per row), "labels": [B] int32, "weights": [B] float32 (1: a real example,
0: a padding row)}.

- Training batch `step` is a pure function of (seed, step): example i of the global order is
  entry i % N of the permutation seeded with (seed, epoch = i // N), so every epoch sees
  each example once and a resumed run sees exactly the batches it would have seen.
- Evaluation walks the held-out examples in order, ceil(N / B) batches; the last one is
  filled up with padding rows of weight 0, so every example counts once and none twice.
"""

import math

import numpy as np

from genvis.data.batching import process_rows
from genvis.errors import UserError


class LabelledBatches:
  """Token sequences with labels, truncated to their first `seq_len` tokens."""

  def __init__(self, sequences: list[np.ndarray], labels: np.ndarray, seq_len: int,
               global_batch: int, seed: int, name: str = "data"):
    if len(sequences) == 0:
      raise UserError(f"{name} has no examples")
    if len(sequences) != len(labels):
      raise ValueError(f"{len(sequences)} sequences but {len(labels)} labels")
    self.num_examples = len(sequences)
    self.seq_len = seq_len
    self.global_batch = global_batch
    self.seed = seed
    self.tokens = np.zeros((self.num_examples, seq_len), np.int32)
    self.lengths = np.zeros((self.num_examples,), np.int32)
    for i, sequence in enumerate(sequences):
      kept = sequence[:seq_len]
      self.tokens[i, :len(kept)] = kept
      self.lengths[i] = len(kept)
    self.labels = np.asarray(labels, np.int32)
    self.truncated = sum(len(s) > seq_len for s in sequences)  # for the log
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

  def _rows(self, indices: np.ndarray, weights: np.ndarray) -> dict:
    return {"tokens": self.tokens[indices], "lengths": self.lengths[indices],
            "labels": self.labels[indices], "weights": weights.astype(np.float32)}

  def train_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    rows = process_rows(self.global_batch, process_index, process_count)
    indices = self.train_indices(step)[rows]
    return self._rows(indices, np.ones(len(indices)))

  @property
  def num_eval_batches(self) -> int:
    return math.ceil(self.num_examples / self.global_batch)

  def eval_batch(self, index: int, process_index: int = 0, process_count: int = 1) -> dict:
    """Held-out batch `index` of `num_eval_batches`: examples [index * B, (index + 1) * B),
    the tail padded with copies of example 0 at weight 0."""
    positions = index * self.global_batch + np.arange(self.global_batch)
    real = positions < self.num_examples
    indices = np.where(real, positions, 0)
    rows = process_rows(self.global_batch, process_index, process_count)
    return self._rows(indices[rows], real[rows])

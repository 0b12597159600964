"""Deterministic batches of labelled token sequences, padded to one length.

A batch is {"tokens": [B, T] int32 (padded with 0 after each sequence), "lengths": [B] int32
(real tokens per row), "labels": [B] int32, "weights": [B] float32 (1: a real example,
0: a padding row)}.

Which examples form each batch is `batching.ExampleOrder`'s job: seeded epoch permutations
for training (a pure function of (seed, step)), an in-order walk padded at weight 0 for
evaluation, so every held-out example counts once and none twice.
"""

import numpy as np

from genvis.data.batching import ExampleOrder, process_rows
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
    self.order = ExampleOrder(self.num_examples, global_batch, seed, name)

  def train_indices(self, step: int) -> np.ndarray:
    """The example indices of global training batch `step`."""
    return self.order.train_indices(step)

  def _rows(self, indices: np.ndarray, weights: np.ndarray) -> dict:
    return {"tokens": self.tokens[indices], "lengths": self.lengths[indices],
            "labels": self.labels[indices], "weights": weights.astype(np.float32)}

  def train_batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    rows = process_rows(self.global_batch, process_index, process_count)
    indices = self.train_indices(step)[rows]
    return self._rows(indices, np.ones(len(indices)))

  @property
  def num_eval_batches(self) -> int:
    return self.order.num_eval_batches

  def eval_batch(self, index: int, process_index: int = 0, process_count: int = 1) -> dict:
    """Held-out batch `index` of `num_eval_batches`: examples [index * B, (index + 1) * B),
    the tail padded with copies of example 0 at weight 0."""
    indices, weights = self.order.eval_indices(index)
    rows = process_rows(self.global_batch, process_index, process_count)
    return self._rows(indices[rows], weights[rows])

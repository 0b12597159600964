"""Bits per dimension, and the count-based baselines a pixel model must beat.

An autoregressive image model's test loss, in nats per pixel token, is `nats / ln 2` bits per
pixel, and that divided by the channels is bits per dimension (of the palette-quantised image,
which is what the tokens describe; for grey data with native levels, of the image). Two
baselines need no neural network and bracket what "learned something" means:

- unigram: one categorical distribution over tokens, shared by every position (its test
  cross-entropy is close to the entropy of the pixel histogram, ~2.98 bits on the digits);
- per-pixel categorical: an independent categorical distribution for each position, which
  knows that corners are blank and centres are inked, but nothing about neighbours.

Both are fitted on the training tokens with add-alpha smoothing; alpha is chosen by the
leave-one-out likelihood of the training tokens (closed form for a Dirichlet-smoothed count
model), so the baselines are as good as such models get without looking at the test set.
"""

import math

import numpy as np

from genvis.errors import UserError

ALPHAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


def nats_to_bits(nats: float) -> float:
  return nats / math.log(2)


def _counts(tokens: np.ndarray, num_values: int) -> np.ndarray:
  """[positions, num_values] counts of each value at each position ([1, V] when pooled)."""
  positions = tokens.shape[1]
  flat = tokens + num_values * np.arange(positions)[None, :]
  return np.bincount(flat.ravel(), minlength=positions * num_values).reshape(positions,
                                                                             num_values)


def _leave_one_out_bits(counts: np.ndarray, alpha: float) -> float:
  """Mean bits of each training token under the smoothed counts of all the others."""
  totals = counts.sum(axis=1, keepdims=True)
  num_values = counts.shape[1]
  present = counts > 0
  prob = (counts - 1 + alpha) / (totals - 1 + num_values * alpha)
  return float(-(counts[present] * np.log2(prob[present])).sum() / counts.sum())


def _test_bits(counts: np.ndarray, alpha: float, test_tokens: np.ndarray,
               num_values: int) -> float:
  probs = (counts + alpha) / (counts.sum(axis=1, keepdims=True) + num_values * alpha)
  if len(probs) == 1:  # pooled over positions
    return float(-np.log2(probs[0][test_tokens]).mean())
  positions = np.arange(test_tokens.shape[1])[None, :]
  return float(-np.log2(probs[positions, test_tokens]).mean())


def _check_tokens(name: str, tokens, num_values: int) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise UserError(f"{name} must be integer tokens [N, positions], got {tokens.dtype} "
                    f"{list(tokens.shape)}")
  if tokens.size and (tokens.min() < 0 or tokens.max() >= num_values):
    raise UserError(f"{name} holds values outside 0..{num_values - 1} "
                    f"(min {tokens.min()}, max {tokens.max()})")
  return tokens


def categorical_baselines(train_tokens, test_tokens, num_values: int,
                          channels: int = 1) -> dict:
  """Test bits of the unigram and per-pixel categorical models fitted on train.

  Args:
    train_tokens, test_tokens: int [N, positions] tokens (one per pixel, raster order).
    num_values: the token vocabulary (palette size).
    channels: the image's channels, to turn bits per pixel into bits per dimension.

  Returns:
    {"unigram": {"bits_per_pixel", "bits_per_dim", "alpha"}, "per_pixel": {same},
     "train_entropy_bits": entropy of the training histogram, bits per pixel}.
  """
  train = _check_tokens("train_tokens", train_tokens, num_values)
  test = _check_tokens("test_tokens", test_tokens, num_values)
  if not train.size or not test.size:
    raise UserError(f"categorical_baselines needs tokens in both splits (train "
                    f"{list(train.shape)}, test {list(test.shape)})")
  if train.shape[1] != test.shape[1]:
    raise UserError(f"train_tokens has {train.shape[1]} positions, test_tokens "
                    f"{test.shape[1]}")
  per_position = _counts(train, num_values)
  pooled = per_position.sum(axis=0, keepdims=True)
  result = {}
  for name, counts in (("unigram", pooled), ("per_pixel", per_position)):
    alpha = min(ALPHAS, key=lambda a, c=counts: _leave_one_out_bits(c, a))
    bits = _test_bits(counts, alpha, test, num_values)
    result[name] = {"bits_per_pixel": bits, "bits_per_dim": bits / channels, "alpha": alpha}
  histogram = pooled[0] / pooled.sum()
  nonzero = histogram[histogram > 0]
  result["train_entropy_bits"] = float(-(nonzero * np.log2(nonzero)).sum())
  return result

"""Count-based bits/dim baselines: exact on hand-made data, per-pixel beats unigram when
positions differ, alpha chosen without the test set, one-line errors."""

import numpy as np
import pytest

from genvis.errors import UserError
from genvis.eval import bits_per_dim


def test_uniform_tokens_cost_log2_of_the_vocabulary():
  rng = np.random.default_rng(0)
  train = rng.integers(0, 8, size=(4000, 4))
  test = rng.integers(0, 8, size=(500, 4))
  result = bits_per_dim.categorical_baselines(train, test, 8)
  for name in ("unigram", "per_pixel"):
    assert result[name]["bits_per_dim"] == pytest.approx(3.0, abs=0.02)
  assert result["train_entropy_bits"] == pytest.approx(3.0, abs=0.01)


def test_per_pixel_model_knows_each_position():
  # Position 0 is always 0, position 1 always 1: per pixel costs ~0 bits, unigram 1 bit.
  train = np.tile([[0, 1]], (100, 1))
  test = np.tile([[0, 1]], (10, 1))
  result = bits_per_dim.categorical_baselines(train, test, 2)
  assert result["per_pixel"]["bits_per_dim"] < 0.05
  assert result["unigram"]["bits_per_dim"] == pytest.approx(1.0, abs=0.01)
  # Leave-one-out prefers the least smoothing when every position is deterministic.
  assert result["per_pixel"]["alpha"] == min(bits_per_dim.ALPHAS)


def test_unseen_test_values_are_finite_thanks_to_smoothing():
  train = np.zeros((50, 3), np.int64)
  test = np.full((5, 3), 2)
  result = bits_per_dim.categorical_baselines(train, test, 3)
  assert np.isfinite(result["per_pixel"]["bits_per_dim"])
  assert result["per_pixel"]["bits_per_dim"] > 5


def test_bits_per_dim_divides_bits_per_pixel_by_the_channels():
  rng = np.random.default_rng(0)
  train, test = rng.integers(0, 8, size=(400, 4)), rng.integers(0, 8, size=(50, 4))
  result = bits_per_dim.categorical_baselines(train, test, 8, channels=3)
  assert result["unigram"]["bits_per_dim"] == result["unigram"]["bits_per_pixel"] / 3


def test_bad_tokens_are_named():
  with pytest.raises(UserError, match="test_tokens holds values outside 0..3"):
    bits_per_dim.categorical_baselines(np.zeros((2, 2), int), np.full((2, 2), 4), 4)
  with pytest.raises(UserError, match="train_tokens has 3 positions, test_tokens 2"):
    bits_per_dim.categorical_baselines(np.zeros((2, 3), int), np.zeros((2, 2), int), 4)
  with pytest.raises(UserError, match="needs tokens in both splits"):
    bits_per_dim.categorical_baselines(np.zeros((0, 3), int), np.zeros((2, 3), int), 4)
  with pytest.raises(UserError, match="must be integer tokens"):
    bits_per_dim.categorical_baselines(np.zeros((2, 3)), np.zeros((2, 3), int), 4)

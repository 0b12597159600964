"""Mode coverage and energy distance of point samples; the full-covariance Gaussian
bits/dim baseline against closed forms."""

import math

import numpy as np
import pytest
from scipy import stats

from genvis.data import digits, toy2d
from genvis.errors import UserError
from genvis.eval import gaussian_baseline, point_samples


def test_mode_coverage_counts_dropped_modes():
  mix = toy2d.mixture("gmm")
  points, labels = toy2d.sample_points("gmm", 0, np.arange(4000))
  full = point_samples.mode_coverage(points, mix.weights, mix.means, mix.covs)
  assert full["modes_covered"] == full["num_modes"] == 8
  assert full["high_quality_fraction"] > 0.98  # 3 std in 2-D holds 98.9 %
  dropped = point_samples.mode_coverage(points[labels != 3], mix.weights, mix.means, mix.covs)
  assert dropped["modes_covered"] == 7 and dropped["worst_mode_share"] == 0.0
  smeared = point_samples.mode_coverage(points * 0.5, mix.weights, mix.means, mix.covs)
  assert smeared["high_quality_fraction"] < 0.01


def test_energy_distance_closed_forms():
  a, b = np.zeros((2, 2)), np.tile([[3.0, 4.0]], (2, 1))
  assert point_samples.energy_distance(a, b) == pytest.approx(10.0)  # 2 |x - y|
  rng = np.random.default_rng(0)
  same = point_samples.energy_distance(rng.normal(size=(500, 2)), rng.normal(size=(500, 2)))
  shifted = point_samples.energy_distance(rng.normal(size=(500, 2)),
                                          rng.normal(size=(500, 2)) + [1.0, 0.0])
  assert abs(same) < 0.02 and shifted > 0.2
  with pytest.raises(UserError, match=r"samples_b has shape \[3, 3\]"):
    point_samples.energy_distance(a, np.zeros((3, 3)))


def test_gaussian_nll_matches_scipy():
  rng = np.random.default_rng(1)
  cov = np.array([[1.0, 0.3, 0.0], [0.3, 2.0, 0.5], [0.0, 0.5, 0.7]])
  x = rng.normal(size=(5, 3))
  nll = gaussian_baseline.gaussian_nll_nats(x, np.ones(3), cov)
  np.testing.assert_allclose(nll, -stats.multivariate_normal(np.ones(3), cov).logpdf(x),
                             rtol=1e-10)


def test_baseline_on_gaussian_data_and_on_the_digits():
  # Fine 256-level data drawn from N(0, 0.1^2 I): the Gaussian's bits/dim is near the
  # discretised Gaussian's entropy, h = 0.5 log2(2 pi e 0.01) + log2(1 / w) per dim.
  rng = np.random.default_rng(2)
  width = 2 / 255
  data = np.clip(np.round((rng.normal(0, 0.1, size=(6000, 4)) + 1) / width) * width - 1, -1, 1)
  result = gaussian_baseline.gaussian_baseline_bits_per_dim(data[:5000], data[5000:], 256)
  entropy = 0.5 * math.log2(2 * math.pi * math.e * 0.01) + math.log2(1 / width)
  assert result["bits_per_dim"] == pytest.approx(entropy, abs=0.05)
  assert result["offset"] == pytest.approx(math.log2(127.5))
  # The digits: constant blank corners do not break the fit (dequantised, variance w^2/12).
  train, _ = digits.load_digits("train")
  test, _ = digits.load_digits("test")
  digits_bits = gaussian_baseline.gaussian_baseline_bits_per_dim(train, test, 17)
  assert 2.5 < digits_bits["bits_per_dim"] < math.log2(17)  # below a uniform over 17 levels

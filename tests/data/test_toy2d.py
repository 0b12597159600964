"""2-D toy densities: points are a pure function of (seed, split, index), batches of (seed,
step) on every process, the mixtures' moments and exact log-density are right."""

import math

import jax
import ml_collections
import numpy as np
import pytest
from scipy import special

from genvis.data import toy2d
from genvis.diffusion import sde as sde_lib
from genvis.errors import UserError


def data_config(**overrides):
  return ml_collections.ConfigDict({"source": "toy2d", "density": "gmm", "batch_size": 16,
                                    "test_size": 20, "dataset_seed": 0, **overrides})


def test_points_are_a_pure_function_of_seed_split_and_index():
  points, labels = toy2d.sample_points("moons", 3, np.arange(50))
  again, _ = toy2d.sample_points("moons", 3, np.arange(40, 60))
  np.testing.assert_array_equal(again[:10], points[40:])
  assert points.shape == (50, 2) and points.dtype == np.float32 and labels.dtype == np.int32
  other_seed, _ = toy2d.sample_points("moons", 4, np.arange(50))
  test_split, _ = toy2d.sample_points("moons", 3, np.arange(50), split="test")
  assert not np.allclose(points, other_seed) and not np.allclose(points, test_split)


def test_batches_per_process_assemble_the_global_batch():
  whole = toy2d.Toy2DBatches(data_config(), seed=1)
  halves = [toy2d.Toy2DBatches(data_config(), seed=1, process_index=i, process_count=2)
            for i in range(2)]
  batch = whole.train_batch(5)
  np.testing.assert_array_equal(
      np.concatenate([h.train_batch(5)["x"] for h in halves]), batch["x"])
  assert not np.array_equal(whole.train_batch(6)["x"], batch["x"])
  evals = list(whole.eval_batches(-1))
  assert len(evals) == 2 and sum(b["weights"].sum() for _, b in evals) == 20
  np.testing.assert_array_equal(evals[0][1]["x"], whole.test_points[:16])


@pytest.mark.parametrize("name", ["gmm", "grid", "gaussian"])
def test_mixture_samples_have_the_mixture_moments(name):
  mix = toy2d.mixture(name)
  points, labels = toy2d.sample_points(name, 0, np.arange(4000))
  mean = mix.weights @ mix.means
  second = np.einsum("k,kij->ij", mix.weights,
                     mix.covs + np.einsum("ki,kj->kij", mix.means, mix.means))
  # 4,000 draws: Monte-Carlo error ~ 1.4 / sqrt(4000) = 0.02 on the mean, ~0.05 on cov.
  np.testing.assert_allclose(points.mean(0), mean, atol=0.08)
  np.testing.assert_allclose(np.cov(points.T), second - np.outer(mean, mean), atol=0.15)
  # Each point sits near the mode its label names.
  distance = np.linalg.norm(points - mix.means[labels], axis=1)
  assert np.quantile(distance, 0.99) < 4 * math.sqrt(np.max(np.linalg.eigvalsh(mix.covs)))


def test_other_densities_stay_on_their_support():
  board, squares = toy2d.sample_points("checkerboard", 0, np.arange(4000))
  cells = np.floor(board + 2.0).astype(int)
  assert np.all((cells.sum(axis=1) % 2) == 0) and np.all(np.abs(board) <= 2)
  assert np.bincount(squares).min() > 400  # 8 squares, ~500 each
  moons, which = toy2d.sample_points("moons", 0, np.arange(4000))
  assert set(np.unique(which)) == {0, 1} and np.abs(moons.mean(0)).max() < 0.1


def test_true_logp_at_time_zero_is_the_mixture_density():
  mix = toy2d.mixture("gmm")
  x = np.array([[2.0, 0.0], [0.0, 0.0], [1.3, 1.5]], np.float32)
  log_densities = [math.log(w / (2 * np.pi * 0.01)) - np.sum((x - m)**2, axis=1) / 0.02
                   for w, m in zip(mix.weights, mix.means)]
  expected = special.logsumexp(log_densities, axis=0)
  got = np.asarray(jax.jit(toy2d.true_logp("gmm", sde_lib.VPSDE()))(x, np.zeros(3)))
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert got[1] < -50  # far from every mode
  score = jax.jit(toy2d.true_score("gmm", sde_lib.VPSDE()))(x[:1], np.zeros(1))
  np.testing.assert_allclose(score, [[0.0, 0.0]], atol=1e-3)  # at a mode's centre


def test_mistakes_name_the_key():
  with pytest.raises(UserError, match=r"config.data.density='swirl'"):
    toy2d.Toy2DBatches(data_config(density="swirl"), seed=0)
  with pytest.raises(UserError, match="no closed-form density"):
    toy2d.true_logp("moons", sde_lib.VPSDE())

"""The hashed dropout mask: its keep rate, the independence of its elements and of masks from
different keys, and that sharding does not change it.

Statistical checks allow 5 binomial standard deviations: a correct mask fails one with
probability under 1e-6; a biased or correlated one (say a bit shared by neighbours) is off by
hundreds of them.
"""

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from genvis.nn.dropout import Dropout, dropout, keep_mask

SHAPE = (64, 48, 40)  # 122,880 elements
N = math.prod(SHAPE)


def assert_rate(observed: float, expected: float, trials: int):
  sigma = math.sqrt(expected * (1 - expected) / trials)
  assert abs(observed - expected) < 5 * sigma, (observed, expected, sigma)


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.9])
def test_keeps_each_element_with_probability_one_minus_rate(rate):
  keep = np.asarray(keep_mask(jax.random.key(3), rate, SHAPE))
  assert keep.shape == SHAPE and keep.dtype == bool
  assert_rate(keep.mean(), 1 - rate, N)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_neighbouring_elements_are_independent(axis):
  keep = np.asarray(keep_mask(jax.random.key(4), 0.5, SHAPE))
  first = np.take(keep, range(SHAPE[axis] - 1), axis=axis)
  second = np.take(keep, range(1, SHAPE[axis]), axis=axis)
  assert_rate((first & second).mean(), 0.25, first.size)
  assert_rate((first == second).mean(), 0.5, first.size)


def test_masks_from_different_keys_are_independent():
  key = jax.random.key(5)
  # (fold_in(key, i) is split(key, n)[i] in JAX, hence 100.)
  masks = [np.asarray(keep_mask(k, 0.5, SHAPE))
           for k in [*jax.random.split(key, 3), jax.random.fold_in(key, 100), key]]
  for i, a in enumerate(masks):
    for b in masks[i + 1:]:
      assert_rate((a == b).mean(), 0.5, N)
  np.testing.assert_array_equal(masks[-1], np.asarray(keep_mask(key, 0.5, SHAPE)))


def test_dropout_zeroes_and_rescales():
  x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, SHAPE), jnp.float32)
  out = np.asarray(dropout(x, 0.25, jax.random.key(6)))
  kept = out != 0
  np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert_rate(kept.mean(), 0.75, N)
  assert np.asarray(dropout(x, 1.0, jax.random.key(6))).sum() == 0
  assert dropout(x.astype(jnp.bfloat16), 0.25, jax.random.key(6)).dtype == jnp.bfloat16
  assert dropout(jnp.float32(2.0), 0.5, jax.random.key(6)).shape == ()


def test_module_is_the_identity_when_deterministic_and_draws_from_the_dropout_rngs():
  x = jnp.ones((16, 64))
  layer = Dropout(0.5)
  assert layer.apply({}, x, deterministic=True) is x
  train = lambda seed: np.asarray(layer.apply({}, x, deterministic=False,
                                              rngs={"dropout": jax.random.key(seed)}))
  out = train(7)
  assert set(np.unique(out)) == {0.0, 2.0}
  np.testing.assert_array_equal(out, train(7))
  assert (out != train(8)).any()
  with pytest.raises(flax.errors.InvalidRngError):
    layer.apply({}, x, deterministic=False)


def test_rate_outside_zero_one_is_an_error():
  with pytest.raises(ValueError, match="rate 1.5"):
    keep_mask(jax.random.key(0), 1.5, (3,))


def test_mask_does_not_depend_on_the_sharding():
  mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharding = NamedSharding(mesh, PartitionSpec("a", "b"))
  sharded = jax.jit(lambda k: keep_mask(k, 0.3, SHAPE), out_shardings=sharding)
  key = jax.random.key(8)
  out = sharded(key)
  assert len(out.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(out), np.asarray(keep_mask(key, 0.3, SHAPE)))

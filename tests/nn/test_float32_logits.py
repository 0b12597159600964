"""Output heads under bfloat16 compute: float32 logits, and the backward of a bfloat16 head."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from genvis.nn import float32_logits
from genvis.nn.token_embedding import TokenEmbed

VOCAB, WIDTH = 64, 32
# Hidden states and a table whose logits reach about +-50, where bfloat16 steps by 0.25.
X = 1.2 * jax.random.normal(jax.random.key(0), (4, 8, WIDTH))
TABLE = 1.2 * jax.random.normal(jax.random.key(1), (VOCAB, WIDTH))
PROBE = jax.random.normal(jax.random.key(2), (4, 8, VOCAB))


def exact_logits():
  """float64 logits of the bfloat16-rounded operands (what a float32 accumulator holds)."""
  as64 = lambda a: np.asarray(a.astype(jnp.bfloat16), np.float64)
  return as64(X) @ as64(TABLE).T


def tied_head(dtype):
  return lambda x, table: TokenEmbed(VOCAB, WIDTH, dtype=dtype).apply(
      {"params": {"embedding": table}}, x, method="attend")


def untied_head(dot_general):
  dense = nn.Dense(VOCAB, use_bias=False, dtype=jnp.bfloat16, dot_general=dot_general)
  return lambda x, table: dense.apply({"params": {"kernel": table.T}}, x)


def cast_afterwards(x, table):  # the head before: a bfloat16 result, cast to float32
  return jnp.dot(x.astype(jnp.bfloat16), table.astype(jnp.bfloat16).T).astype(jnp.float32)


def test_logits_are_not_rounded_to_bfloat16():
  exact = exact_logits()
  assert np.abs(exact).max() > 32
  for head in (tied_head(jnp.bfloat16), untied_head(float32_logits.dot_general)):
    logits = jax.jit(head)(X, TABLE)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, exact, rtol=1e-5, atol=1e-4)
  # The check can fail: a bfloat16 result is off by up to half its step, 0.125 here.
  assert np.abs(cast_afterwards(X, TABLE) - exact).max() > 0.05


def test_the_backward_runs_in_bfloat16_as_the_cast_afterwards_head_did():
  # A linear loss, so that the cotangent does not depend on the (different) forward values.
  def grads(head):
    loss = lambda x, table: jnp.sum(head(x, table) * PROBE)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(X, TABLE)

  reference = grads(cast_afterwards)
  for head in (tied_head(jnp.bfloat16), untied_head(float32_logits.dot_general)):
    for ours, theirs in zip(grads(head), reference):
      np.testing.assert_array_equal(ours, theirs)
    loss = lambda x, table, head=head: jnp.sum(head(x, table) * PROBE)
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(X, TABLE).as_text()
    dots = [line for line in hlo.splitlines() if "stablehlo.dot_general" in line]
    assert len(dots) == 2, dots  # the two gradients (a linear loss needs no forward result)
    # All on bfloat16 operands: the float32 cotangent did not turn them into float32 matmuls.
    assert all(re.search(r": \(tensor<[0-9x]+xbf16>, tensor<[0-9x]+xbf16>\)", d) for d in dots)


def test_float32_heads_are_unchanged():
  plain = nn.Dense(VOCAB, use_bias=False)
  ours = nn.Dense(VOCAB, use_bias=False, dot_general=float32_logits.dot_general)
  params = {"params": {"kernel": TABLE.T}}
  np.testing.assert_array_equal(ours.apply(params, X), plain.apply(params, X))
  np.testing.assert_array_equal(
      tied_head(jnp.float32)(X, TABLE),
      nn.Embed(VOCAB, WIDTH).apply({"params": {"embedding": TABLE}}, X, method="attend"))

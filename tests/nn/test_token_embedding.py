"""TokenEmbed: flax's nn.Embed, gathering from the float32 table before casting to bf16."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.nn.token_embedding import TokenEmbed

VOCAB, WIDTH = 50, 16
# 4096 tokens on 5 ids: rows summed over ~800 tokens each, where bf16 sums lose digits.
IDS = jax.random.randint(jax.random.key(1), (64, 64), 0, 5)


def table_gradient(module):
  variables = module.init(jax.random.key(0), IDS)
  probe = jax.random.normal(jax.random.key(2), (*IDS.shape, WIDTH))
  loss = lambda v: jnp.sum(module.apply(v, IDS).astype(jnp.float32) * probe)
  grad = jax.jit(jax.grad(loss))(variables)["params"]["embedding"]
  # The exact sum over each row's tokens of the gradient the rows receive (in bf16).
  cotangent = np.asarray(probe.astype(jnp.bfloat16), np.float64)
  exact = np.zeros((VOCAB, WIDTH))
  np.add.at(exact, np.asarray(IDS), cotangent)
  return np.asarray(grad, np.float64), exact


def test_bf16_compute_sums_the_table_gradient_in_float32():
  grad, exact = table_gradient(TokenEmbed(VOCAB, WIDTH, dtype=jnp.bfloat16))
  np.testing.assert_allclose(grad, exact, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(grad[5:], 0)  # rows no token uses
  # The check can fail: flax's Embed sums the same gradient in bf16, far off the exact sum.
  flax_grad, _ = table_gradient(nn.Embed(VOCAB, WIDTH, dtype=jnp.bfloat16))
  assert np.abs(flax_grad - exact).max() > 100 * np.abs(grad - exact).max()


def test_token_embed_is_a_drop_in_for_flax_embed():
  flax_embed = nn.Embed(VOCAB, WIDTH, dtype=jnp.bfloat16)
  ours = TokenEmbed(VOCAB, WIDTH, dtype=jnp.bfloat16)
  variables = flax_embed.init(jax.random.key(3), IDS)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(3), IDS))
          == jax.tree.map(jnp.shape, variables))
  np.testing.assert_array_equal(ours.apply(variables, IDS), flax_embed.apply(variables, IDS))
  x = jax.random.normal(jax.random.key(4), (2, WIDTH), jnp.bfloat16)
  # attend: the same logits, but in float32 rather than rounded to bfloat16
  # (tests/nn/test_float32_logits.py checks them against exact ones).
  logits = ours.apply(variables, x, method="attend")
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, flax_embed.apply(variables, x, method="attend"),
                             rtol=1e-2, atol=1e-3)
  with pytest.raises(ValueError, match="token ids must be integers"):
    ours.init(jax.random.key(0), jnp.ones((2, 3)))

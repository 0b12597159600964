"""Multi-head self-attention through `jax.nn.dot_product_attention`, with a KV cache.

Attention goes through `jax.nn.dot_product_attention`, so the implementation JAX picks (the
XLA one today; a fused cuDNN kernel on GPUs is the planned GPU-speed work) serves every
platform from the same code. That function has no dropout on the attention
weights, so when training with `dropout_rate > 0` (GPT-1/2's attn_pdrop) the weights are
computed explicitly instead (`attention_with_dropout`): same math, plus dropout.

Decoding keeps the keys and values of earlier positions in the "cache" collection:
`cached_key`/`cached_value` of shape [batch, cache_len, heads, head_dim] and the number of
positions written so far, `cache_index`. Calling the module with `decode=True` on a chunk of
T tokens (a whole prompt, or one token) writes the chunk at `cache_index` and attends to
everything written so far, so a prompt is prefilled in one call.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.nn import partitioning as P
from genvis.nn.dense import DenseND


class SelfAttention(nn.Module):
  """Causal (or bidirectional) multi-head self-attention with a fused QKV projection."""

  num_heads: int
  head_dim: int
  causal: bool = True
  dropout_rate: float = 0.0  # on the attention weights, in training only
  deterministic: bool = True
  init_std: float = 0.02
  out_std: float = 0.02
  use_bias: bool = True
  decode: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    d_model = x.shape[-1]
    qkv = DenseND((3, self.num_heads, self.head_dim), (P.EMBED, None, P.HEADS, P.HEAD_DIM),
                  init_std=self.init_std, use_bias=self.use_bias, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, heads, head_dim]

    if self.decode and self.has_variable("cache", "cached_key"):
      out = self._attend_with_cache(q, k, v)
    elif self.dropout_rate > 0 and not self.deterministic:
      out = attention_with_dropout(q, k, v, self.causal, self.dropout_rate,
                                   self.make_rng("dropout"))
    else:
      if self.decode:  # the first (initialising) call only creates the cache
        self._cache_variables(k, v)
      out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)
    out = P.constrain(out, (P.BATCH, P.LENGTH, P.HEADS, P.HEAD_DIM))
    return DenseND((d_model,), (P.HEADS, P.HEAD_DIM, P.EMBED), contract_dims=2,
                   init_std=self.out_std, use_bias=self.use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="out")(out)

  def _cache_variables(self, k, v):
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    return cached_key, cached_value, index

  def _attend_with_cache(self, q, k, v):
    cached_key, cached_value, index = self._cache_variables(k, v)
    start, chunk = index.value, k.shape[1]
    keys = jax.lax.dynamic_update_slice(cached_key.value, k.astype(cached_key.value.dtype),
                                        (0, start, 0, 0))
    values = jax.lax.dynamic_update_slice(cached_value.value,
                                          v.astype(cached_value.value.dtype), (0, start, 0, 0))
    cached_key.value, cached_value.value, index.value = keys, values, start + chunk
    # Query i of the chunk sits at position start + i and sees keys at positions <= it;
    # slots not yet written are masked out by the same comparison.
    query_pos = start + jnp.arange(chunk)
    key_pos = jnp.arange(keys.shape[1])
    mask = key_pos[None, :] <= query_pos[:, None]
    if not self.causal:
      mask = jnp.broadcast_to(key_pos[None, :] < start + chunk, mask.shape)
    return jax.nn.dot_product_attention(q, keys, values, mask=mask[None, None])


def attention_with_dropout(q, k, v, causal: bool, rate: float, rng):
  """softmax(q k^T / sqrt(d)) with dropout on the weights, then times v; [B, T, N, H] in/out.

  Scores and softmax are in float32 whatever the compute dtype, as in the fused kernels.
  """
  scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  if causal:
    t, s = scores.shape[-2:]
    scores = jnp.where(jnp.tril(jnp.ones((t, s), bool)), scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  keep = jax.random.bernoulli(rng, 1.0 - rate, weights.shape)
  weights = jnp.where(keep, weights / (1.0 - rate), 0.0).astype(v.dtype)
  return jnp.einsum("bnts,bsnh->btnh", weights, v)

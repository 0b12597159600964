"""Multi-head self-attention with a KV cache.

`implementation="cudnn"` runs cuDNN's fused flash kernel through `jax.nn.dot_product_attention`;
`""` (the default) lets that function choose on GPUs and TPUs. XLA's attention ("xla", and ""
on CPUs) is written out here instead (`softmax_attention`): the same math as the XLA path of
`jax.nn.dot_product_attention`, but on [B, N, T, S] arrays, where that path vmaps into 5-D
ones with a leading 1. XLA:CPU's YNNPACK reduces the latter about 10x slower (the softmax
gradient's row sums: 633 against 66 us for [12, 4, 64, 64]), which cost the tiny GPT's train
step 4-6 % (experiments/results/lm/README.md). The written-out form also serves dropout on
the attention weights (GPT-1/2's attn_pdrop), which `jax.nn.dot_product_attention` lacks.

Local (banded) attention, GPT-3's sparse layers: with `local_window = w > 0` a query at
position t sees only keys at t-w+1 .. t (causal), the band of the Sparse Transformer's local
pattern. Through `jax.nn.dot_product_attention` a static window goes to the kernel
(`local_window_size`), which can skip the masked blocks; written out, and for a `window`
passed at call time (a traced per-layer value, used when scanned layers alternate dense and
local), it is a mask, 0 meaning dense.

Decoding keeps the keys and values of earlier positions in the "cache" collection:
`cached_key`/`cached_value` of shape [batch, cache_len, heads, head_dim] and, per row, the
number of positions written so far, `cache_index` [batch]. Calling the module with
`decode=True` on a chunk of T tokens (a whole prompt, or one token) writes each row's chunk
at its own `cache_index` and attends to everything written so far, so a prompt is prefilled
in one call, and rows of a batch may sit at different positions (prompts of different
lengths, see genvis/sampling/generate.py). Cached steps take XLA's attention through
`jax.nn.dot_product_attention`, with that per-row mask, on every backend.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.nn import partitioning as P
from genvis.nn.dense import DenseND
from genvis.nn.dropout import dropout


class SelfAttention(nn.Module):
  """Causal (or bidirectional) multi-head self-attention with a fused QKV projection."""

  num_heads: int
  head_dim: int
  causal: bool = True
  local_window: int = 0  # > 0: banded attention over the last `local_window` positions
  dropout_rate: float = 0.0  # on the attention weights, in training only
  deterministic: bool = True
  init_std: float = 0.02
  out_std: float = 0.02
  use_bias: bool = True
  decode: bool = False
  implementation: str | None = None  # None (JAX's choice), "xla" or "cudnn"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x, window=None):
    """`window`: a traced per-layer band width overriding `local_window` (0: dense)."""
    d_model = x.shape[-1]
    qkv = DenseND((3, self.num_heads, self.head_dim), (P.EMBED, None, P.HEADS, P.HEAD_DIM),
                  init_std=self.init_std, use_bias=self.use_bias, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B, T, heads, head_dim]
    if window is None and self.local_window > 0:
      window = self.local_window
    if self.implementation == "cudnn" and jax.default_backend() != "gpu":
      raise UserError(f"config.model.attention_impl='cudnn' needs a GPU; this run is on "
                      f"{jax.default_backend()} (use '' or 'xla')")

    if self.decode and self.has_variable("cache", "cached_key"):
      out = self._attend_with_cache(q, k, v, window)
      return self._project_out(out, d_model)
    if self.decode:  # the first (initialising) call only creates the cache
      self._cache_variables(k, v)
    rate = 0.0 if self.deterministic else self.dropout_rate
    if self.implementation == "cudnn":
      check_cudnn_can_run(rate, window, self.causal)
    through_jax = self.implementation == "cudnn" or (
        not self.implementation and jax.default_backend() != "cpu")
    if through_jax and rate == 0 and not _is_traced(window):
      band = None if not window else ((window - 1, 0) if self.causal else window - 1)
      out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal,
                                         local_window_size=band,
                                         implementation=self.implementation or None)
    else:
      positions = jnp.arange(x.shape[1])
      mask = attention_mask(positions, positions, causal=self.causal, window=window)
      out = softmax_attention(q, k, v, mask, rate,
                              self.make_rng("dropout") if rate > 0 else None)
    return self._project_out(out, d_model)

  def _project_out(self, out, d_model):
    out = P.constrain(out, (P.BATCH, P.LENGTH, P.HEADS, P.HEAD_DIM))
    return DenseND((d_model,), (P.HEADS, P.HEAD_DIM, P.EMBED), contract_dims=2,
                   init_std=self.out_std, use_bias=self.use_bias, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="out")(out)

  def _cache_variables(self, k, v):
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", jnp.zeros, k.shape[:1], jnp.int32)
    return cached_key, cached_value, index

  def _attend_with_cache(self, q, k, v, window):
    cached_key, cached_value, index = self._cache_variables(k, v)
    start, chunk = index.value, k.shape[1]  # start: [B]
    write = jax.vmap(lambda cache, new, at: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), at, axis=0))
    keys = write(cached_key.value, k, start)
    values = write(cached_value.value, v, start)
    cached_key.value, cached_value.value, index.value = keys, values, start + chunk
    # Row b's query i sits at position start[b] + i and sees keys at positions <= it; slots
    # not yet written (and stale ones past a shorter prompt) fail the same comparison.
    query_pos = start[:, None] + jnp.arange(chunk)
    key_pos = jnp.arange(keys.shape[1])
    mask = attention_mask(query_pos, key_pos, causal=self.causal, window=window)
    if not self.causal:  # every written slot, none of the empty ones
      mask &= key_pos < (start + chunk)[:, None, None]
    return jax.nn.dot_product_attention(q, keys, values, mask=mask[:, None])


def check_cudnn_can_run(rate: float, window, causal: bool):
  """What cuDNN's kernel behind jax.nn.dot_product_attention cannot run would silently take
  the written-out attention instead (or fail inside JAX): say so, when tracing this call.
  Checked here, not in the config, because dropout is on only in training: evaluating or
  sampling a model trained with attention dropout runs the kernel."""
  remedy = "use config.model.attention_impl='' or 'xla'"
  if rate > 0:
    raise UserError(f"config.model.attention_impl='cudnn' has no attention dropout "
                    f"(config.model.attention_dropout={rate} in training): {remedy}, or "
                    "attention_dropout=0")
  if _is_traced(window):
    raise UserError("config.model.attention_impl='cudnn' cannot take the band width that "
                    "scanned layers of a mixed attention_pattern carry as a traced value: "
                    f"{remedy}")
  if window and not causal:
    raise UserError("config.model.attention_impl='cudnn' bands only causal attention; this "
                    f"model is bidirectional with local layers: {remedy}")


def _is_traced(value) -> bool:
  return isinstance(value, jax.Array)


def attention_mask(query_pos, key_pos, *, causal: bool, window=None):
  """Which keys each query may see: bool [..., T, S] from positions [..., T] and [S].

  causal: keys at or before the query. window > 0 (static or traced): only keys less than
  `window` positions away (before the query if causal, on either side otherwise).
  """
  distance = query_pos[..., :, None] - key_pos
  allowed = distance >= 0 if causal else jnp.ones(distance.shape, bool)
  if window is not None:
    near = (distance if causal else jnp.abs(distance)) < window
    allowed &= near | (jnp.asarray(window) <= 0)
  return allowed


def softmax_attention(q, k, v, mask, rate: float = 0.0, rng=None):
  """softmax(q k^T / sqrt(d)) over the `mask`ed keys, with dropout on the weights (when
  rate > 0), then times v; q, k, v and the output are [B, T, N, H], mask [T, S].

  Scores and softmax are in float32 whatever the compute dtype, as in the fused kernels.
  """
  scores = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32)
  scores = scores / jnp.sqrt(jnp.float32(q.shape[-1]))
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  weights = dropout(weights, rate, rng)  # the identity at rate 0
  return jnp.einsum("bnts,bsnh->btnh", weights.astype(v.dtype), v)

"""Compiled autoregressive generation with a KV cache.

`generate` is one jitted function with the decoding loop inside (`lax.fori_loop`): the prompt
is prefilled in a single forward pass that fills the cache, then each new token costs one
forward pass over a single position. Temperature and top-k are traced values, so changing
them does not recompile; the number of new tokens fixes the output shape and so is static.

The model must accept `(tokens, decode=True)` and keep its cache in the "cache" collection
(see genvis/nn/attention.py).
"""

import functools

import jax
import jax.numpy as jnp

from genvis.errors import UserError


def check_length(prompt_len: int, max_new_tokens: int, max_len: int):
  """Prompt plus generated tokens must fit the model's context."""
  if prompt_len > max_len:
    raise UserError(f"the prompt has {prompt_len} tokens, longer than the model's context "
                    f"(model.max_len={max_len})")
  if prompt_len + max_new_tokens > max_len:
    raise UserError(f"a prompt of {prompt_len} tokens + sample.max_new_tokens="
                    f"{max_new_tokens} exceeds the model's context (model.max_len={max_len})")


def sample_logits(logits, rng, temperature, top_k):
  """Draw one token per row. temperature <= 0 is greedy; top_k <= 0 keeps every token."""
  vocab = logits.shape[-1]
  k = jnp.clip(top_k, 1, vocab)
  kth_largest = jnp.sort(logits, axis=-1)[:, vocab - k][:, None]
  logits = jnp.where((top_k > 0) & (logits < kth_largest), -jnp.inf, logits)
  sampled = jax.random.categorical(rng, logits / jnp.maximum(temperature, 1e-6), axis=-1)
  return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def init_cache(model, batch_size: int, length: int):
  """A zeroed KV cache for `length` positions (shapes from an abstract init, no compute)."""
  tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
  shapes = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, decode=True)["cache"], tokens)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def generate(model, params, prompt, rng, *, max_new_tokens: int, temperature=1.0, top_k=0):
  """Continue `prompt` [batch, prompt_len] by `max_new_tokens` tokens.

  Returns [batch, prompt_len + max_new_tokens] token ids, the prompt included.
  """
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  temperature = jnp.asarray(temperature, jnp.float32)
  top_k = jnp.asarray(top_k, jnp.int32)

  def forward(cache, tokens):
    logits, updated = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                  mutable=["cache"])
    return logits[:, -1], updated["cache"]

  last_logits, cache = forward(init_cache(model, batch, total), prompt)
  rng, first_rng = jax.random.split(rng)
  tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(prompt)
  tokens = tokens.at[:, prompt_len].set(sample_logits(last_logits, first_rng, temperature, top_k))

  def step(i, carry):
    tokens, cache, rng = carry
    previous = jax.lax.dynamic_slice_in_dim(tokens, prompt_len + i - 1, 1, axis=1)
    logits, cache = forward(cache, previous)
    rng, step_rng = jax.random.split(rng)
    next_token = sample_logits(logits, step_rng, temperature, top_k)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, next_token[:, None], prompt_len + i,
                                                 axis=1)
    return tokens, cache, rng

  tokens, _, _ = jax.lax.fori_loop(1, max_new_tokens, step, (tokens, cache, rng))
  return tokens

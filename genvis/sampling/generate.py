"""Compiled autoregressive generation with a KV cache.

`generate` is one jitted function with the decoding loop inside (`lax.while_loop`): the
(padded) prompts are prefilled in a single forward pass that fills the cache, then each new
token costs one forward pass over a single position. Prompts of different lengths share a
batch: every row keeps its own cache position, so row b continues from its own last prompt
token, and the loop stops early once every row has produced a stop token.

Temperature, top-k, top-p, the stop token and the prompt lengths are traced values, so
changing them does not recompile; the padded prompt length and the number of new tokens fix
the shapes and so are static.

The model must accept `(tokens, decode=True)` and keep its cache in the "cache" collection
with each row's position in variables named `*_index` of shape [batch] (see
genvis/nn/attention.py and the GPT's `position_index`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from genvis.errors import UserError


def check_length(prompt_len: int, max_new_tokens: int, max_len: int, context: str = ""):
  """Prompt plus generated tokens, less the last one (sampled, never fed back), must fit the
  model's context of `max_len` tokens; `context` names what sets it (default
  "model.max_len=<max_len>")."""
  context = context or f"model.max_len={max_len}"
  if prompt_len > max_len:  # first: max_new_tokens=0 ("fill the context") derives from it
    raise UserError(f"the prompt has {prompt_len} tokens, longer than the model's context "
                    f"({context})")
  if max_new_tokens < 1:
    raise UserError(f"config.sample.max_new_tokens={max_new_tokens}: generate at least one "
                    "token")
  if prompt_len + max_new_tokens - 1 > max_len:
    raise UserError(f"a prompt of {prompt_len} tokens + config.sample.max_new_tokens="
                    f"{max_new_tokens} exceeds the model's context ({context}; the model "
                    "reads every token but the last)")


def check_filters(temperature: float, top_k: int, top_p: float):
  """The config's sampling settings, each in its range: below it the code would read them as
  "off" (a negative temperature as greedy, a negative top_k as no top-k) without a word."""
  if temperature < 0:
    raise UserError(f"config.sample.temperature={temperature} must be >= 0 (0: greedy)")
  if top_k < 0:
    raise UserError(f"config.sample.top_k={top_k} must be >= 0 (0: off)")
  if not 0.0 < top_p <= 1.0:
    raise UserError(f"config.sample.top_p={top_p} must be in (0, 1] (1 switches nucleus "
                    "sampling off)")


def filter_logits(logits, temperature, top_k, top_p):
  """Logits scaled by 1/temperature, with tokens outside the top-k and outside the nucleus
  (the smallest set of most likely tokens whose probability reaches top_p, Holtzman et al.
  2020) set to -inf.

  top_k <= 0 and top_p >= 1 switch the filters off; the most likely token always stays, and
  ties at a threshold are kept.
  """
  vocab = logits.shape[-1]
  logits = logits / jnp.maximum(temperature, 1e-6)
  descending = jnp.sort(logits, axis=-1)[:, ::-1]
  in_top_k = (top_k <= 0) | (jnp.arange(vocab) < top_k)
  descending = jnp.where(in_top_k, descending, -jnp.inf)
  # A token is in the nucleus if the tokens more likely than it hold less than top_p.
  probs = jax.nn.softmax(descending, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  in_nucleus = (top_p >= 1.0) | (mass_before < top_p)
  kept = jnp.maximum(jnp.sum(in_top_k & in_nucleus, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(descending, kept - 1, axis=-1)
  return jnp.where(logits < threshold, -jnp.inf, logits)


def sample_logits(logits, rng, temperature, top_k, top_p=1.0):
  """Draw one token per row. temperature <= 0 is greedy."""
  def draw():
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
  # A branch, not a select: greedy decoding skips the sorts of the filters (~20% of a
  # small model's decoding step on CPU).
  return jax.lax.cond(temperature > 0, draw,
                      lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32))


def init_cache(model, batch_size: int, length: int):
  """A zeroed KV cache for `length` positions (shapes from an abstract init, no compute)."""
  tokens = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
  shapes = jax.eval_shape(
      lambda t: model.init(jax.random.key(0), t, decode=True)["cache"], tokens)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _set_positions(cache, positions):
  """Every row's cache position (the `*_index` variables, [batch] or [layers, batch])."""
  def set_leaf(path, leaf):
    name = getattr(path[-1], "key", "")
    return jnp.broadcast_to(positions, leaf.shape) if name.endswith("_index") else leaf
  return jax.tree_util.tree_map_with_path(set_leaf, cache)


def _grow_cache(cache, length: int):
  """Every cached key and value padded with empty slots to `length` positions."""
  def grow(path, leaf):
    if getattr(path[-1], "key", "") not in ("cached_key", "cached_value"):
      return leaf
    axis = leaf.ndim - 3  # [..., batch, positions, heads, head_dim]; scanned layers lead
    pad = [(0, 0)] * leaf.ndim
    pad[axis] = (0, length - leaf.shape[axis])
    return jnp.pad(leaf, pad)
  return jax.tree_util.tree_map_with_path(grow, cache)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "cache_chunk"))
def generate(model, params, prompt, rng, *, max_new_tokens: int, temperature=1.0, top_k=0,
             top_p=1.0, prompt_lengths=None, stop_token=-1, cache_chunk: int = 128):
  """Continue each row of `prompt` [batch, prompt_len] by up to `max_new_tokens` tokens.

  prompt_lengths [batch]: row b's prompt is prompt[b, :prompt_lengths[b]] (the rest is
  padding); default: every row is a full-length prompt. A row that samples `stop_token`
  (>= 0) has stopped, and the loop ends once every row has: what follows a stop token in the
  output was not generated (more stop tokens or zeros).

  The KV cache grows by `cache_chunk` positions at a time (one compiled loop per chunk), so
  a step attends over the positions written so far, not the whole output length: at batch
  1 on a CPU, reading the cache is a third of a small model's step at 512 tokens.

  Returns [batch, prompt_len + max_new_tokens] token ids: row b holds its prompt, then its
  new tokens from position prompt_lengths[b] on, then zeros.
  """
  batch, prompt_len = prompt.shape
  total = prompt_len + max_new_tokens
  rows = jnp.arange(batch)
  lengths = (jnp.full((batch,), prompt_len, jnp.int32) if prompt_lengths is None
             else jnp.asarray(prompt_lengths, jnp.int32))
  temperature = jnp.asarray(temperature, jnp.float32)
  top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)
  stop_token = jnp.asarray(stop_token, jnp.int32)

  def forward(cache, tokens):
    logits, updated = model.apply({"params": params, "cache": cache}, tokens, decode=True,
                                  mutable=["cache"])
    return logits, updated["cache"]

  # Prefill all rows to the padded length, then move each row back to its own end: the
  # padding's cache slots are overwritten by that row's new tokens and never attended to.
  # The last new token is sampled but never fed back: the cache needs one slot fewer than
  # the output, so a model can fill its whole context (ImageGPT: start token + every pixel).
  first_chunk_end = min(cache_chunk, max_new_tokens)
  logits, cache = forward(init_cache(model, batch, prompt_len + first_chunk_end - 1), prompt)
  cache = _set_positions(cache, lengths)
  last_logits = logits[rows, lengths - 1]
  position_in_row = jnp.arange(total)[None, :]
  tokens = jnp.where(position_in_row < lengths[:, None],
                     jnp.pad(prompt, ((0, 0), (0, max_new_tokens))), 0)

  def add_token(tokens, done, logits, i, rng):
    """Sample new token i of every row (rows that stopped repeat the stop token)."""
    next_token = sample_logits(logits, rng, temperature, top_k, top_p)
    next_token = jnp.where(done, stop_token, next_token)
    tokens = tokens.at[rows, lengths + i].set(next_token)
    return tokens, done | ((stop_token >= 0) & (next_token == stop_token))

  rng, first_rng = jax.random.split(rng)
  tokens, done = add_token(tokens, jnp.zeros((batch,), bool), last_logits, 0, first_rng)

  def step(carry):
    i, tokens, done, cache, rng = carry
    previous = tokens[rows, lengths + i - 1][:, None]  # written to cache slot < P + i
    logits, cache = forward(cache, previous)
    rng, step_rng = jax.random.split(rng)
    tokens, done = add_token(tokens, done, logits[:, -1], i, step_rng)
    return i + 1, tokens, done, cache, rng

  carry = (1, tokens, done, cache, rng)
  for chunk_end in range(first_chunk_end, max_new_tokens + cache_chunk, cache_chunk):
    chunk_end = min(chunk_end, max_new_tokens)
    carry = (*carry[:3], _grow_cache(carry[3], prompt_len + chunk_end - 1), carry[4])
    carry = jax.lax.while_loop(
        lambda c, end=chunk_end: (c[0] < end) & ~jnp.all(c[2]), step, carry)
    if chunk_end == max_new_tokens:
      break
  return carry[1]


def continuations(tokens, prompt_lengths, max_new_tokens: int):
  """Each row's new tokens (a list of numpy int arrays) from `generate`'s output."""
  tokens = np.asarray(tokens)
  return [row[start:start + max_new_tokens] for row, start in zip(tokens, prompt_lengths)]

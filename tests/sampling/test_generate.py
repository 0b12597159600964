"""Compiled KV-cached generation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import gpt
from genvis.sampling import generate

MAX_NEW = 12


# Looped and scanned layers; the scanned model alternates dense and banded attention layers,
# so the cache path is checked with a traced per-layer window too.
@pytest.fixture(scope="module", params=[False, True], ids=["loop", "scan_alternating"])
def model_and_params(request):
  sparse = dict(attention_pattern="alternating", local_window=4) if request.param else {}
  config = gpt.GPTConfig(**gpt.config_for(
      "tiny", vocab_size=29, num_layers=2, d_model=32, num_heads=4, max_len=24,
      scan_layers=request.param, **sparse))
  model = gpt.GPT(config)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
  params = nn.meta.unbox(init(jax.random.key(1)))
  return model, params


def recompute_greedy(model, params, prompt, steps):
  """Reference: re-run the whole prefix at every step, no cache. The prefix lives in a
  fixed-size buffer (one compile); causality makes the padding after it irrelevant."""
  batch, prompt_len = prompt.shape
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  tokens = np.zeros((batch, prompt_len + steps), np.int32)
  tokens[:, :prompt_len] = prompt
  for t in range(prompt_len, prompt_len + steps):
    # The last token is never an input: the model sees at most prompt_len + steps - 1.
    tokens[:, t] = np.argmax(forward(tokens[:, :-1])[:, t - 1], axis=-1)
  return tokens


@pytest.mark.parametrize("cache_chunk", [128, 5], ids=["one_chunk", "growing_cache"])
def test_cached_greedy_equals_recomputing_the_prefix(model_and_params, cache_chunk):
  model, params = model_and_params
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, 29, size=(3, 5)), jnp.int32)
  cached = generate.generate(model, params, prompt, jax.random.key(0),
                             max_new_tokens=MAX_NEW, temperature=0.0, cache_chunk=cache_chunk)
  np.testing.assert_array_equal(cached, recompute_greedy(model, params, prompt, MAX_NEW))
  # Not a degenerate check: greedy continuations are not all one repeated token.
  assert len(np.unique(np.asarray(cached[:, 5:]))) > 1


def test_generation_fills_the_whole_context_plus_the_final_token(model_and_params):
  # max_len=24: 5 prompt tokens + 20 new = 25 tokens, of which the model reads 24. ImageGPT
  # needs exactly this: a start token and every pixel, in a context of one per pixel.
  model, params = model_and_params
  prompt = jnp.asarray(np.random.default_rng(2).integers(0, 29, size=(2, 5)), jnp.int32)
  new = model.config.max_len + 1 - 5
  generate.check_length(5, new, model.config.max_len)
  cached = generate.generate(model, params, prompt, jax.random.key(0), max_new_tokens=new,
                             temperature=0.0, cache_chunk=7)
  np.testing.assert_array_equal(cached, recompute_greedy(model, params, prompt, new))
  with pytest.raises(UserError, match="exceeds"):
    generate.check_length(5, new + 1, model.config.max_len)


def test_prompts_of_different_lengths_continue_like_each_prompt_alone(model_and_params):
  model, params = model_and_params
  rng = np.random.default_rng(1)
  lengths = [2, 7, 4]
  padded = np.zeros((3, 7), np.int32)
  for row, length in enumerate(lengths):
    padded[row, :length] = rng.integers(1, 29, size=length)
  batched = np.asarray(generate.generate(
      model, params, jnp.asarray(padded), jax.random.key(0), max_new_tokens=MAX_NEW,
      temperature=0.0, prompt_lengths=jnp.asarray(lengths), cache_chunk=4))
  for row, length in enumerate(lengths):
    alone = recompute_greedy(model, params, padded[row:row + 1, :length], MAX_NEW)[0]
    np.testing.assert_array_equal(batched[row, :length + MAX_NEW], alone)
    assert not batched[row, length + MAX_NEW:].any()  # nothing past the row's end
  new = generate.continuations(batched, lengths, MAX_NEW)
  np.testing.assert_array_equal(new[1], batched[1, 7:])


def test_stop_token_ends_each_row_and_the_loop(model_and_params):
  model, params = model_and_params
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, 29, size=(3, 5)), jnp.int32)
  free = np.asarray(generate.generate(model, params, prompt, jax.random.key(0),
                                      max_new_tokens=MAX_NEW, temperature=0.0))
  stop = int(free[0, 7])  # row 0's third new token
  stopped = np.asarray(generate.generate(model, params, prompt, jax.random.key(0),
                                         max_new_tokens=MAX_NEW, temperature=0.0,
                                         stop_token=stop, cache_chunk=4))
  for row in range(3):
    hits = np.flatnonzero(free[row, 5:] == stop)
    end = 5 + (hits[0] + 1 if len(hits) else MAX_NEW)
    np.testing.assert_array_equal(stopped[row, :end], free[row, :end])
    assert set(stopped[row, end:].tolist()) <= {stop, 0}


def test_top_p_keeps_the_smallest_set_reaching_p():
  probs = jnp.array([[0.5, 0.05, 0.3, 0.15]])
  logits = jnp.log(probs)
  kept = lambda p: np.isfinite(np.asarray(generate.filter_logits(
      logits, jnp.float32(1.0), jnp.int32(0), jnp.float32(p))))[0]
  np.testing.assert_array_equal(kept(0.5), [True, False, False, False])
  np.testing.assert_array_equal(kept(0.6), [True, False, True, False])
  np.testing.assert_array_equal(kept(0.9), [True, False, True, True])
  np.testing.assert_array_equal(kept(1.0), [True, True, True, True])
  draws = generate.sample_logits(jnp.repeat(logits, 300, axis=0), jax.random.key(0),
                                 jnp.float32(1.0), jnp.int32(0), jnp.float32(0.6))
  assert set(np.asarray(draws).tolist()) == {0, 2}


def test_top_k_one_is_greedy_and_sampling_is_seeded(model_and_params):
  model, params = model_and_params
  prompt = jnp.zeros((2, 3), jnp.int32)
  run = lambda seed, **kw: np.asarray(generate.generate(
      model, params, prompt, jax.random.key(seed), max_new_tokens=MAX_NEW, **kw))
  greedy = run(0, temperature=0.0)
  np.testing.assert_array_equal(run(5, temperature=1.0, top_k=1), greedy)
  np.testing.assert_array_equal(run(3, temperature=1.0), run(3, temperature=1.0))
  assert (run(3, temperature=2.0) != run(4, temperature=2.0)).any()


def test_top_k_restricts_to_the_k_most_likely():
  logits = jnp.array([[0.0, 5.0, 4.0, -1.0, 3.0]] * 200)
  draws = generate.sample_logits(logits, jax.random.key(0), jnp.float32(5.0), jnp.int32(2))
  assert set(np.asarray(draws).tolist()) == {1, 2}


def test_prompt_longer_than_context_is_a_one_line_error():
  with pytest.raises(UserError, match=r"longer than the model's context \(model.max_len=24\)"):
    generate.check_length(25, 1, 24)
  with pytest.raises(UserError, match="max_new_tokens=10 exceeds"):
    generate.check_length(20, 10, 24)
  with pytest.raises(UserError, match="max_new_tokens=0: generate at least one token"):
    generate.check_length(3, 0, 24)


def test_top_p_at_or_below_zero_keeps_the_top_token_and_combines_with_top_k():
  logits = jnp.array([[3.0, 1.0, 0.0, -1.0]])
  kept = lambda k, p: np.isfinite(np.asarray(generate.filter_logits(
      logits, jnp.float32(1.0), jnp.int32(k), jnp.float32(p))))[0].tolist()
  assert kept(2, 0.0) == [True, False, False, False]
  assert kept(2, 1.0) == [True, True, False, False]
  assert kept(3, 0.99) == [True, True, True, False]  # top-k binds before the nucleus does

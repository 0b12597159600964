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


@pytest.fixture(scope="module", params=[False, True], ids=["loop", "scan"])
def model_and_params(request):
  config = gpt.GPTConfig(**gpt.config_for(
      "tiny", vocab_size=29, num_layers=2, d_model=32, num_heads=4, max_len=24,
      scan_layers=request.param))
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
    tokens[:, t] = np.argmax(forward(tokens)[:, t - 1], axis=-1)
  return tokens


def test_cached_greedy_equals_recomputing_the_prefix(model_and_params):
  model, params = model_and_params
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, 29, size=(3, 5)), jnp.int32)
  cached = generate.generate(model, params, prompt, jax.random.key(0),
                             max_new_tokens=MAX_NEW, temperature=0.0)
  np.testing.assert_array_equal(cached, recompute_greedy(model, params, prompt, MAX_NEW))
  # Not a degenerate check: greedy continuations are not all one repeated token.
  assert len(np.unique(np.asarray(cached[:, 5:]))) > 1


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
    generate.check_length(25, 0, 24)
  with pytest.raises(UserError, match="max_new_tokens=10 exceeds"):
    generate.check_length(20, 10, 24)

"""GPT: shapes, causality, parameter counts of the named variants, options."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import gpt
from genvis.nn.attention import attention_mask, softmax_attention

SMALL = dict(vocab_size=37, num_layers=2, d_model=32, num_heads=4, max_len=16)


def apply(model, params, tokens, **kwargs):
  """model.apply, compiled (eager Linen calls dispatch op by op and are slow)."""
  return jax.jit(model.apply, static_argnames=("train",))({"params": params}, tokens, **kwargs)


def make(**overrides):
  config = gpt.GPTConfig(**gpt.config_for("tiny", **{**SMALL, **overrides}))
  model = gpt.GPT(config)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 16), jnp.int32))["params"])
  params = nn.meta.unbox(init(jax.random.key(0)))
  return model, params


@pytest.fixture(scope="module")
def small_model():
  return make()


def test_logits_shape_and_dtype(small_model):
  model, params = small_model
  tokens = jnp.ones((3, 10), jnp.int32)
  logits = apply(model, params, tokens)
  chex.assert_shape(logits, (3, 10, 37))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)


def test_causality_future_tokens_do_not_change_past_logits(small_model):
  model, params = small_model
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 37, size=(2, 16))
  changed = tokens.copy()
  t = 7
  changed[:, t + 1:] = rng.integers(0, 37, size=(2, 16 - t - 1))
  base = apply(model, params, tokens)
  other = apply(model, params, changed)
  np.testing.assert_allclose(base[:, :t + 1], other[:, :t + 1], rtol=1e-6, atol=1e-6)
  # The check can fail: a later position does see the change.
  assert np.abs(base[:, t + 1:] - other[:, t + 1:]).max() > 1e-3


# Hugging Face GPT2LMHeadModel / OpenAIGPTLMHeadModel parameter counts (tied head).
EXACT_COUNTS = {
    "gpt1": 116_534_784,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}
# Brown et al. 2020, Table 2.1 (rounded to the figures printed there).
GPT3_COUNTS = {
    "gpt3-small": 125e6, "gpt3-medium": 350e6, "gpt3-large": 760e6, "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9, "gpt3-6.7b": 6.7e9, "gpt3-13b": 13.0e9, "gpt3-175b": 175.0e9,
}


@pytest.mark.parametrize("variant", sorted(EXACT_COUNTS))
def test_parameter_count_matches_hugging_face(variant):
  config = gpt.GPTConfig(**gpt.config_for(variant))
  assert gpt.count_params(gpt.abstract_params(config)) == EXACT_COUNTS[variant]


@pytest.mark.parametrize("variant", sorted(GPT3_COUNTS))
def test_parameter_count_matches_gpt3_paper(variant):
  config = gpt.GPTConfig(**gpt.config_for(variant))
  count = gpt.count_params(gpt.abstract_params(config))
  # The paper rounds to two or three significant figures: within 2 %.
  assert abs(count - GPT3_COUNTS[variant]) / GPT3_COUNTS[variant] < 0.02


# Chen et al. 2020 (ImageGPT), table 1 and section 3.3, in millions: S and M are printed as
# 76M and 455M, L and XL as 1362M and 6801M.
IGPT_COUNTS = {"igpt-s": 76e6, "igpt-m": 455e6, "igpt-l": 1362e6, "igpt-xl": 6801e6}


@pytest.mark.parametrize("variant", sorted(IGPT_COUNTS))
def test_parameter_count_matches_imagegpt_paper(variant):
  config = gpt.GPTConfig(**gpt.config_for(variant))
  count = gpt.count_params(gpt.abstract_params(config))
  # Within 1 %: S is 76.68M here and in Hugging Face's ImageGPT (test below), printed as 76M
  # (truncated, 0.9 % low); XL is 6812.5M with 4096 positions for 64x64 images, 0.17 % above
  # the paper's 6801M, whose head count and exact context the paper does not print.
  assert abs(count - IGPT_COUNTS[variant]) / IGPT_COUNTS[variant] < 0.01


@pytest.mark.parametrize("variant", ["igpt-s", "igpt-m", "igpt-l"])
def test_imagegpt_parameter_count_matches_hugging_face(variant):
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config = gpt.GPTConfig(**gpt.config_for(variant))
  hf_config = transformers.ImageGPTConfig(
      vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.d_model,
      n_layer=config.num_layers, n_head=config.num_heads)
  with torch.device("meta"):  # shapes only, no memory
    model = transformers.ImageGPTForCausalImageModeling(hf_config)
  assert gpt.count_params(gpt.abstract_params(config)) == sum(
      p.numel() for p in model.parameters())


def test_imagegpt_head_starts_at_zero_and_skips_the_start_token():
  model, params = make(vocab_size=9, output_vocab_size=8, tie_embeddings=False,
                       zero_init_head=True, norm="rms", activation="quick_gelu")
  assert not np.any(params["head"]["kernel"])
  assert set(params["blocks"]["layer_0"]["ln_1"]) == {"scale"}  # gain only
  logits = apply(model, params, jnp.full((2, 5), 8, jnp.int32))
  chex.assert_shape(logits, (2, 5, 8))
  np.testing.assert_array_equal(logits, 0.0)  # uniform over the palette at initialisation


def test_output_vocab_size_needs_an_untied_head():
  with pytest.raises(UserError, match="output_vocab_size=8 needs config.model.tie_embeddings"):
    gpt.GPTConfig(**gpt.config_for("tiny", **{**SMALL, "output_vocab_size": 8}))


def test_layer_outputs_are_each_blocks_output_looped_or_scanned(small_model):
  model, params = small_model
  tokens = jnp.arange(20).reshape(2, 10) % 37
  layers = jax.jit(lambda p, t: gpt.layer_outputs(model, p, t))(params, tokens)
  chex.assert_shape(layers, (2, 2, 10, 32))
  # The last block's output, through the final norm and the tied head, gives the logits.
  ln_f = nn.LayerNorm(epsilon=model.config.layer_norm_epsilon, use_bias=False)
  logits = ln_f.apply({"params": params["ln_f"]}, layers[-1]) @ params["wte"]["embedding"].T
  np.testing.assert_allclose(logits, apply(model, params, tokens), rtol=1e-4, atol=1e-4)
  assert np.abs(layers[0] - layers[1]).max() > 1e-3
  scanned_model, _ = make(scan_layers=True)
  stacked = {**params, "blocks": {"layers": jax.tree.map(
      lambda *x: jnp.stack(x), *[params["blocks"][f"layer_{i}"] for i in range(2)])}}
  np.testing.assert_allclose(gpt.layer_outputs(scanned_model, stacked, tokens), layers,
                             rtol=1e-5, atol=1e-5)


def test_gpt3_13b_has_heads_times_head_dim_unequal_to_width():
  params = gpt.abstract_params(gpt.GPTConfig(**gpt.config_for("gpt3-13b")))
  chex.assert_shape(params["blocks"]["layer_0"]["attn"]["qkv"]["kernel"], (5140, 3, 40, 128))


def test_scan_and_remat_give_the_same_function_as_the_loop():
  model, params = make()
  scanned_model, _ = make(scan_layers=True, remat="full")
  # Stack the per-layer parameters along a leading axis, as nn.scan lays them out.
  layers = [params["blocks"][f"layer_{i}"] for i in range(2)]
  scanned = {**params, "blocks": {"layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}}
  tokens = jnp.arange(24).reshape(2, 12) % 37
  np.testing.assert_allclose(apply(model, params, tokens),
                             apply(scanned_model, scanned, tokens), rtol=1e-5, atol=1e-5)


def test_residual_projections_use_scaled_init():
  _, params = make(num_layers=8, d_model=64)
  proj = params["blocks"]["layer_0"]["mlp"]["proj"]["kernel"]
  fc = params["blocks"]["layer_0"]["mlp"]["fc"]["kernel"]
  assert abs(float(jnp.std(fc)) - 0.02) < 0.002
  assert abs(float(jnp.std(proj)) - 0.02 / 4.0) < 0.001  # 0.02 / sqrt(2 * 8)


def test_gpt1_initialises_residual_projections_like_every_other_weight():
  config = gpt.GPTConfig(**gpt.config_for("gpt1"))
  assert config.residual_std == config.init_std == 0.02
  gpt2 = gpt.GPTConfig(**gpt.config_for("gpt2"))
  assert gpt2.residual_std == pytest.approx(0.02 / 24 ** 0.5)


def test_post_ln_gpt1_style_has_no_final_norm():
  _, params = make(norm_position="post", final_norm=False)
  assert "ln_f" not in params


def test_bfloat16_compute_runs_on_cpu():
  model, params = make(dtype="bfloat16")
  logits = apply(model, params, jnp.ones((2, 8), jnp.int32))
  chex.assert_type(logits, jnp.float32)  # logits are returned in float32 for the loss
  chex.assert_tree_all_finite(logits)
  # The matmuls ran in bf16: the result differs from float32 compute at bf16 precision.
  f32_model, _ = make()
  diff = np.abs(np.asarray(logits)
                - np.asarray(apply(f32_model, params, jnp.ones((2, 8), jnp.int32))))
  assert 0 < diff.max() < 0.1


def test_sequence_longer_than_context_is_an_error(small_model):
  model, params = small_model
  with pytest.raises(ValueError, match="max_len=16"):
    apply(model, params, jnp.ones((1, 17), jnp.int32))


@pytest.mark.parametrize("window", [0, 3])
def test_written_out_attention_matches_jax_nn_causal_and_banded(window):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 9, 3, 8)), jnp.float32) for _ in range(3))
  fused = jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                       local_window_size=(window - 1, 0) if window else None)
  mask = attention_mask(jnp.arange(9), jnp.arange(9), causal=True, window=window)
  np.testing.assert_allclose(softmax_attention(q, k, v, mask), fused, rtol=1e-5, atol=1e-6)
  # rate -> 0: every weight kept, so the dropout path must equal it too.
  explicit = softmax_attention(q, k, v, mask, 1e-9, jax.random.key(0))
  np.testing.assert_allclose(explicit, fused, rtol=1e-5, atol=1e-6)
  dropped = softmax_attention(q, k, v, mask, 0.5, jax.random.key(0))
  assert np.abs(np.asarray(dropped) - np.asarray(fused)).max() > 1e-2


def test_training_with_attention_dropout_is_seeded_and_eval_is_deterministic():
  model, params = make(dropout=0.1, attention_dropout=0.1)
  tokens = jnp.ones((2, 8), jnp.int32)
  run = lambda seed: apply(model, params, tokens, train=True,
                          rngs={"dropout": jax.random.key(seed)})
  np.testing.assert_array_equal(run(0), run(0))
  assert np.abs(np.asarray(run(0)) - np.asarray(run(1))).max() > 1e-4
  np.testing.assert_array_equal(apply(model, params, tokens),
                                apply(model, params, tokens))


def test_flops_per_token_counts_attention_keys_per_layer():
  dense = gpt.GPTConfig(**gpt.config_for("gpt3-small"))
  n = gpt.count_params(gpt.abstract_params(dense))
  attention = 12 * 768 * 2048  # 12 · d · T per layer
  assert gpt.flops_per_token(dense, n, 2048) == 6 * (n - 2048 * 768) + 12 * attention
  sparse = gpt.GPTConfig(**gpt.config_for("gpt3-small", attention_pattern="alternating",
                                          local_window=256))
  # Six banded layers see 256 keys, not 2048.
  assert (gpt.flops_per_token(dense, n, 2048) - gpt.flops_per_token(sparse, n, 2048)
          == 6 * 12 * 768 * (2048 - 256))

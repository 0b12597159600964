"""Attention patterns: GPT-3's alternating dense and locally banded layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import gpt
from genvis.nn import attention as attention_lib
from genvis.nn.attention import SelfAttention, attention_mask
from genvis.nn.transformer import TransformerConfig

T, WINDOW = 12, 3


def test_band_mask_sees_exactly_the_last_window_positions():
  mask = np.asarray(attention_mask(jnp.arange(T), jnp.arange(T), causal=True, window=WINDOW))
  for t in range(T):
    assert np.flatnonzero(mask[t]).tolist() == list(range(max(0, t - WINDOW + 1), t + 1))
  dense = np.asarray(attention_mask(jnp.arange(T), jnp.arange(T), causal=True, window=0))
  np.testing.assert_array_equal(dense, np.tril(np.ones((T, T), bool)))


def influence(attention, window=None):
  """Which input positions change each output position: [T, T] bool (the receptive
  field of one attention layer), by perturbing one input position at a time."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, T, 16)), jnp.float32)
  params = attention.init(jax.random.key(0), x)
  apply = jax.jit(lambda x: attention.apply(params, x, window))
  base = np.asarray(apply(x))
  seen = np.zeros((T, T), bool)
  for s in range(T):
    changed = np.asarray(apply(x.at[:, s].add(1.0)))
    seen[:, s] = np.abs(changed - base).max(axis=(0, 2)) > 1e-6
  return seen


@pytest.mark.parametrize("traced", [False, True], ids=["static", "traced"])
def test_local_layer_attends_to_its_band_only(traced):
  if traced:  # scanned mixed patterns pass the window as a traced value
    seen = influence(SelfAttention(num_heads=2, head_dim=8), jnp.int32(WINDOW))
  else:
    seen = influence(SelfAttention(num_heads=2, head_dim=8, local_window=WINDOW))
  expected = np.asarray(attention_mask(jnp.arange(T), jnp.arange(T), causal=True,
                                       window=WINDOW))
  np.testing.assert_array_equal(seen, expected)
  dense = influence(SelfAttention(num_heads=2, head_dim=8))
  np.testing.assert_array_equal(dense, np.tril(np.ones((T, T), bool)))


def test_alternating_pattern_gives_dense_and_local_layers():
  config = TransformerConfig(num_layers=4, d_model=16, num_heads=2,
                             attention_pattern="alternating", local_window=WINDOW)
  assert config.layer_windows() == (0, WINDOW, 0, WINDOW)
  explicit = TransformerConfig(num_layers=3, d_model=16, num_heads=2,
                               attention_pattern="local,dense,local", local_window=5)
  assert explicit.layer_windows() == (5, 0, 5)


@pytest.mark.parametrize("pattern,window,message", [
    ("alternating", 0, "set config.model.local_window"),
    ("dense", 4, "config.model.local_window=4 has no effect"),
    ("dense,local", 4, "4 comma-separated"),
    ("sparse", 4, "expected dense, local, alternating"),
])
def test_bad_attention_pattern_is_a_one_line_error(pattern, window, message):
  with pytest.raises(UserError, match=message):
    TransformerConfig(num_layers=4, d_model=16, num_heads=2, attention_pattern=pattern,
                      local_window=window)


@pytest.mark.parametrize("d_model, num_heads", [(10, 4), (8, 0)])
def test_heads_that_do_not_divide_the_width_are_named(d_model, num_heads):
  with pytest.raises(UserError, match=f"config.model.num_heads={num_heads} must be >= 1 and "
                                      f"divide config.model.d_model={d_model}"):
    TransformerConfig(num_layers=1, d_model=d_model, num_heads=num_heads)
  if num_heads:  # an explicit head width need not divide the model width (GPT-3 13B)
    TransformerConfig(num_layers=1, d_model=d_model, num_heads=num_heads, head_dim=4)


def gpt_with(pattern, scan, num_layers=2):
  config = gpt.GPTConfig(**gpt.config_for(
      "tiny", vocab_size=31, num_layers=num_layers, d_model=16, num_heads=2, max_len=T,
      attention_pattern=pattern, local_window=2, scan_layers=scan))
  model = gpt.GPT(config)
  params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32)))
  return model, params["params"]


def receptive_field(model, params):
  """Which input tokens change the logits at each position."""
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 31, (1, T)), jnp.int32)
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  base = np.asarray(apply(tokens))
  seen = np.zeros((T, T), bool)
  for s in range(T):
    changed = np.asarray(apply(tokens.at[:, s].set((tokens[0, s] + 1) % 31)))
    seen[:, s] = np.abs(changed - base).max(axis=(0, 2)) > 1e-6
  return seen


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_stacked_local_layers_grow_the_receptive_field_and_dense_layers_see_all(scan):
  # Two banded layers of width 2 see 2 + 2 - 1 = 3 tokens back (the Sparse Transformer's
  # argument: depth composes bands); one dense layer anywhere restores full causal context.
  field = receptive_field(*gpt_with("local", scan))
  expected = np.asarray(attention_mask(jnp.arange(T), jnp.arange(T), causal=True, window=3))
  np.testing.assert_array_equal(field, expected)
  np.testing.assert_array_equal(receptive_field(*gpt_with("alternating", scan)),
                                np.tril(np.ones((T, T), bool)))


def test_scanned_and_looped_alternating_models_agree():
  looped, loop_params = gpt_with("alternating", False, num_layers=4)
  scanned, _ = gpt_with("alternating", True, num_layers=4)
  layers = [loop_params["blocks"][f"layer_{i}"] for i in range(4)]
  scan_params = {**loop_params,
                 "blocks": {"layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}}
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 31, (2, T)), jnp.int32)
  np.testing.assert_allclose(scanned.apply({"params": scan_params}, tokens),
                             looped.apply({"params": loop_params}, tokens), atol=1e-5)


def test_cudnn_attention_is_refused_where_it_cannot_run():
  with pytest.raises(UserError, match="attention_impl='cudnn' needs config.model.dtype"):
    TransformerConfig(num_layers=1, d_model=16, num_heads=2, attention_impl="cudnn")
  # What the kernel cannot run is named when a call is traced (a GPU's; the CPU refusal
  # below comes first), not silently run as written-out attention.
  attention_lib.check_cudnn_can_run(0.0, 4, True)  # runs: causal band, no dropout
  for args, message in [
      ((0.1, None, True), r"has no attention dropout \(config.model.attention_dropout=0.1 in "
                          r"training\): use config.model.attention_impl='' or 'xla'"),
      ((0.0, 4, False), "bands only causal attention"),
  ]:
    with pytest.raises(UserError, match=message):
      attention_lib.check_cudnn_can_run(*args)
  with pytest.raises(UserError, match="band width that scanned layers .* carry as a traced"):
    jax.jit(lambda w: attention_lib.check_cudnn_can_run(0.0, w, True))(jnp.int32(4))
  attention = SelfAttention(num_heads=2, head_dim=8, implementation="cudnn")
  with pytest.raises(UserError, match="'cudnn' needs a GPU; this run is on cpu"):
    attention.init(jax.random.key(0), jnp.zeros((1, 4, 16)))

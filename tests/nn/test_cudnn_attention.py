"""cuDNN's fused attention (`attention_impl="cudnn"`) against XLA's, on a GPU.

These run only where JAX's default backend is a GPU (`JAX_PLATFORMS=cuda pytest
tests/nn/test_cudnn_attention.py`); on CPU the refusal is tested in test_attention.py.
Tolerances are bf16's: cuDNN needs bf16/fp16 inputs, so both kernels are compared with a
float32 computation of the same bf16 inputs, by ||out - ref|| / ||ref||.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import gpt

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="cuDNN attention needs a GPU")

B, T, HEADS, HEAD_DIM = 2, 256, 4, 64
BF16_REL = 1e-2  # bf16 rounding of outputs and gradients lands at 1e-3..1e-2


def relative_error(out, ref) -> float:
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  assert np.isfinite(out).all()
  return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def qkv(seed: int):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, T, HEADS, HEAD_DIM)), jnp.bfloat16)
               for _ in range(3))


def attention_and_grads(implementation, q, k, v, window=None):
  """The attention output and the gradients of sum(out * probe) for q, k and v."""
  probe = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), q.dtype)

  def loss(q, k, v):
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=window,
                                       implementation=implementation)
    return jnp.sum(out.astype(jnp.float32) * probe.astype(jnp.float32)), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


@pytest.mark.parametrize("window", [None, (31, 0)], ids=["causal", "banded"])
def test_cudnn_attention_and_its_gradients_match_float32(window):
  q, k, v = qkv(0)
  ref_out, ref_grads = attention_and_grads(
      "xla", *(x.astype(jnp.float32) for x in (q, k, v)), window=window)
  out, grads = attention_and_grads("cudnn", q, k, v, window=window)
  errors = [relative_error(out, ref_out)] + [relative_error(g, r)
                                             for g, r in zip(grads, ref_grads)]
  assert max(errors) < BF16_REL, f"out, dq, dk, dv relative errors: {errors}"
  # The check can fail: XLA's kernel without the window differs by far more than rounding.
  if window is not None:
    dense, _ = attention_and_grads("xla", q, k, v)
    assert relative_error(dense, ref_out) > 10 * BF16_REL


def test_gpt_with_cudnn_attention_matches_xla_and_is_causal():
  small = dict(vocab_size=64, num_layers=2, d_model=128, num_heads=2, max_len=128,
               dtype="bfloat16")
  models = {impl: gpt.GPT(gpt.GPTConfig(**gpt.config_for("tiny", **small,
                                                         attention_impl=impl)))
            for impl in ("xla", "cudnn")}
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, size=(2, 128)), jnp.int32)
  params = nn.meta.unbox(jax.jit(models["xla"].init)(jax.random.key(0), tokens)["params"])
  logits = {impl: jax.jit(model.apply)({"params": params}, tokens)
            for impl, model in models.items()}
  error = relative_error(logits["cudnn"], logits["xla"])
  assert error < BF16_REL, error

  t = 50
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % 64)
  other = jax.jit(models["cudnn"].apply)({"params": params}, changed)
  np.testing.assert_allclose(other[:, :t + 1], logits["cudnn"][:, :t + 1], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(other[:, t + 1:] - logits["cudnn"][:, t + 1:])).max() > 1e-3


def test_a_model_trained_with_attention_dropout_evaluates_with_cudnn_but_cannot_train_so():
  small = dict(vocab_size=64, num_layers=1, d_model=128, num_heads=2, max_len=64,
               dtype="bfloat16", attention_dropout=0.1)  # an imported GPT-2 records 0.1
  model = gpt.GPT(gpt.GPTConfig(**gpt.config_for("tiny", **small, attention_impl="cudnn")))
  tokens = jnp.zeros((2, 64), jnp.int32)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens)["params"])
  assert np.isfinite(np.asarray(jax.jit(model.apply)({"params": params}, tokens))).all()
  with pytest.raises(UserError, match="has no attention dropout"):
    model.apply({"params": params}, tokens, train=True, rngs={"dropout": jax.random.key(1)})

"""The transformer feed-forward block: Dense -> activation -> Dense.

GPT-1 and GPT-2 were trained with the tanh approximation of GELU (Hugging Face's "gelu_new",
and what its OpenAIGPT `afn="gelu"` computes); other checkpoints use the exact erf form. The
two differ by up to ~1e-3 per unit, which is visible in logits, so the choice is a config
field (`activation`) rather than a constant. ImageGPT used the sigmoid approximation
x * sigmoid(1.702 x) (Hugging Face's "quick_gelu").
"""

import functools

import flax.linen as nn
import jax

from genvis.nn import partitioning as P
from genvis.nn.dense import DenseND

ACTIVATIONS = {
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


class Mlp(nn.Module):
  """Position-wise MLP. `out_std` lets GPT scale residual projections by 1/sqrt(2L)."""

  hidden_dim: int
  init_std: float = 0.02
  out_std: float = 0.02
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  activation: str = "gelu_tanh"  # a key of ACTIVATIONS

  @nn.compact
  def __call__(self, x):
    dense = lambda features, axes, std, name: DenseND(
        (features,), axes, init_std=std, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    h = dense(self.hidden_dim, (P.EMBED, P.MLP), self.init_std, "fc")(x)
    h = ACTIVATIONS[self.activation](h)
    h = P.constrain(h, (P.BATCH, P.LENGTH, P.MLP))
    return dense(x.shape[-1], (P.MLP, P.EMBED), self.out_std, "proj")(h)

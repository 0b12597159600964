"""The transformer feed-forward block: Dense -> GELU -> Dense."""

import flax.linen as nn
import jax

from genvis.nn import partitioning as P
from genvis.nn.dense import DenseND


class Mlp(nn.Module):
  """Position-wise MLP. `out_std` lets GPT scale residual projections by 1/sqrt(2L)."""

  hidden_dim: int
  init_std: float = 0.02
  out_std: float = 0.02
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    dense = lambda features, axes, std, name: DenseND(
        (features,), axes, init_std=std, use_bias=self.use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    h = dense(self.hidden_dim, (P.EMBED, P.MLP), self.init_std, "fc")(x)
    # GPT-1/2 use the tanh approximation of GELU ("gelu_new" in Hugging Face).
    h = jax.nn.gelu(h, approximate=True)
    h = P.constrain(h, (P.BATCH, P.LENGTH, P.MLP))
    return dense(x.shape[-1], (P.MLP, P.EMBED), self.out_std, "proj")(h)

"""The transformer feed-forward block: Dense -> GELU -> Dense."""

import flax.linen as nn
import jax

from genvis.nn import partitioning as P


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
    d_model = x.shape[-1]
    dense = lambda features, std, names, name: nn.Dense(
        features,
        use_bias=self.use_bias,
        dtype=P.dtype(self.dtype),
        param_dtype=P.dtype(self.param_dtype),
        kernel_init=P.param_init(nn.initializers.normal(std), names),
        bias_init=P.param_init(nn.initializers.zeros, names[-1:]),
        name=name,
    )
    h = dense(self.hidden_dim, self.init_std, (P.EMBED, P.MLP), "fc")(x)
    # GPT-1/2 use the tanh approximation of GELU ("gelu_new" in Hugging Face).
    h = jax.nn.gelu(h, approximate=True)
    h = P.constrain(h, (P.BATCH, P.LENGTH, P.MLP))
    return dense(d_model, self.out_std, (P.MLP, P.EMBED), "proj")(h)

"""A dense layer with multi-dimensional input and output features (e.g. [embed] -> [3, heads,
head_dim]), whose parameters carry logical axis names.

Flax's DenseGeneral builds a flat 2-D kernel and reshapes it, which breaks logical-axis
constraints on the kernel's real dimensions; this layer creates the kernel in its true shape.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from genvis.nn import partitioning as P


class DenseND(nn.Module):
  """Contracts the last `contract_dims` input dimensions with a kernel of shape
  [*input_dims, *features]; `kernel_axes` names every kernel dimension."""

  features: Sequence[int]
  kernel_axes: Sequence[str | None]
  contract_dims: int = 1
  init_std: float = 0.02
  use_bias: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    features = tuple(self.features)
    in_shape = x.shape[-self.contract_dims:]
    kernel = self.param("kernel", P.param_init(nn.initializers.normal(self.init_std),
                                               self.kernel_axes),
                        (*in_shape, *features), P.dtype(self.param_dtype))
    dtype = P.dtype(self.dtype)
    # The batch dimensions are merged into one before the contraction: the kernel gradient
    # then contracts a single dimension. Contracting [batch, length] together made XLA:CPU
    # materialise a transposed copy of the activation gradient (half the MLP's backward
    # time on the tiny GPT). The merge keeps the batch sharding as long as only the first
    # merged dimension is sharded (the default rules leave `length` unsharded).
    batch_shape = x.shape[:x.ndim - self.contract_dims]
    rows = x.reshape(-1, *in_shape).astype(dtype)
    y = jnp.tensordot(rows, kernel.astype(dtype),
                      axes=(tuple(range(1, 1 + self.contract_dims)),
                            tuple(range(self.contract_dims))))
    y = y.reshape(*batch_shape, *features)
    if self.use_bias:
      bias_axes = tuple(self.kernel_axes)[self.contract_dims:]
      bias = self.param("bias", P.param_init(nn.initializers.zeros, bias_axes), features,
                        P.dtype(self.param_dtype))
      y = y + bias.astype(dtype)
    return y

"""Logical axis names for parameters and activations.

Every parameter is created with logical axis names ("embed", "mlp", "heads", ...) and every
activation at a block boundary is constrained with them. The trainer maps logical names to
mesh axes with rules from the config (`config.mesh.rules`), so data parallel, FSDP and tensor
parallel are a change of rules, not of model code. Outside a mesh these are no-ops.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Logical names used by the layers in genvis/nn. Rules may map any of them to mesh axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
HEAD_DIM = "kv"
VOCAB = "vocab"
LAYERS = "layers"

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str):
  """The jnp dtype for a config string such as "bfloat16"."""
  if name not in DTYPES:
    from genvis.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"dtype {name!r} (config.model.dtype / param_dtype): expected one of "
                    f"{', '.join(DTYPES)}")
  return DTYPES[name]


def param_init(init: Callable, names: Sequence[str | None]) -> Callable:
  """An initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, tuple(names))


def constrain(x, names: Sequence[str | None]):
  """Constrain an activation's sharding by logical axis names."""
  return nn.with_logical_constraint(x, tuple(names))

"""The train state: everything a resumed run needs, as one pytree."""

from typing import Any

import flax.struct
import jax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # int32 scalar: optimizer updates applied so far
  params: Any
  opt_state: Any
  rng: jax.Array  # base key; step s uses fold_in(rng, s), so no key is ever carried forward
  ema_params: Any = None  # exponential moving average of params, or None when off


def update_ema(ema_params, params, decay: float):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype),
                      ema_params, params)

"""make_train_step on a one-parameter task: a finite step updates the whole state, a
non-finite one leaves every leaf of it as it was."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genvis.train.state import TrainState
from genvis.train.step import make_train_step


class LinearTask:
  """loss = mean((x @ w - y)^2); a NaN in x makes the loss and every gradient NaN."""

  @staticmethod
  def loss_fn(params, batch, rng, *, train):
    del rng, train
    loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
    return loss, {"loss": loss}

  @staticmethod
  def batch_totals(batch):
    del batch
    return {}  # a mean over examples (Task's default)


def _state(ema: bool) -> tuple[TrainState, optax.GradientTransformation]:
  params = {"w": jnp.arange(6.0).reshape(3, 2) / 10}
  tx = optax.adamw(1e-2, weight_decay=0.1)
  state = TrainState(step=jnp.int32(3), params=params, opt_state=tx.init(params),
                     rng=jax.random.key(0), ema_params=params if ema else None)
  return state, tx


def _batch(poisoned: bool) -> dict:
  x = np.ones((4, 3), np.float32)
  if poisoned:
    x[2, 1] = np.nan
  return {"x": jnp.asarray(x), "y": jnp.zeros((4, 2))}


@pytest.mark.parametrize("ema,accum", [(False, 1), (True, 2)])
def test_a_non_finite_step_leaves_the_state_unchanged(ema, accum):
  state, tx = _state(ema)
  step = jax.jit(make_train_step(LinearTask(), tx, grad_accum_steps=accum,
                                 ema_decay=0.9 if ema else 0.0))
  new, metrics = step(state, _batch(poisoned=True))
  assert not bool(metrics["finite"])
  chex.assert_trees_all_equal(new, state)

  new, metrics = step(state, _batch(poisoned=False))
  assert bool(metrics["finite"])
  assert int(new.step) == int(state.step) + 1
  for before, after in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
    assert not np.allclose(before, after)
  mu = new.opt_state[0].mu["w"]
  assert float(jnp.abs(mu).max()) > 0
  if ema:
    assert not np.allclose(new.ema_params["w"], state.ema_params["w"])

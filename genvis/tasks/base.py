"""What the generic trainer needs from an objective.

A task owns its data, its model and its loss; it knows nothing about meshes, optimizers or
checkpoints. Batches are numpy dicts holding this process's rows of the global batch.
"""

import abc
from typing import Any, Iterable

import flax.linen as nn
import jax


class Task(abc.ABC):
  """One objective. Subclasses set `self.model` in `__init__`."""

  model: nn.Module

  def __init__(self, config, workdir: str | None, *, process_index: int = 0,
               process_count: int = 1):
    self.config = config
    self.workdir = workdir
    self.process_index = process_index
    self.process_count = process_count

  @abc.abstractmethod
  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one *global* training batch."""

  @abc.abstractmethod
  def init_variables(self, rng) -> dict:
    """`model.init` on a dummy batch (called under `jax.eval_shape` and `jax.jit`)."""

  @abc.abstractmethod
  def train_batch(self, step: int) -> dict:
    """This process's rows of the global batch for `step`; a pure function of (seed, step)."""

  @abc.abstractmethod
  def eval_batches(self) -> Iterable[dict]:
    """This process's rows of a fixed set of held-out batches."""

  @abc.abstractmethod
  def loss_fn(self, params, batch: dict, rng, *, train: bool) -> tuple[jax.Array, dict]:
    """(scalar loss, dict of scalar metrics) for one batch."""

  @abc.abstractmethod
  def flops_per_step(self, num_params: int) -> float:
    """Training FLOPs (forward + backward) for one global batch, for MFU."""

  @abc.abstractmethod
  def tokens_per_step(self) -> int:
    """Items (tokens, pixels, images) per global batch, for the throughput readout."""

  def metadata(self) -> dict[str, Any]:
    """JSON-able facts stored with each checkpoint; a resume checks they still match."""
    return {}

  def model_field_defaults(self) -> dict[str, Any]:
    """Defaults of the model config's fields: a checkpoint written before a field existed
    is compared as if it had recorded the default (what the field's addition preserved)."""
    return {}

  def sample(self, params, rng) -> dict[str, Any]:
    """Samples to show a person (texts, image grids). Optional."""
    return {}

"""What the generic trainer needs from an objective.

A task owns its data, its model and its loss; it knows nothing about meshes, optimizers or
checkpoints. Batches are numpy dicts holding this process's rows of the global batch.
"""

import abc
import dataclasses
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax


@dataclasses.dataclass(frozen=True)
class InitFromParts:
  """Which of another run's parameters start this one (`config.init_from`).

  Attributes:
    source_prefix: take the saved parameters under this path ("vit": an MAE's encoder) and
      put them at the root of this model; "": the whole saved tree.
    exclude: names directly below the prefix that are not taken ("head": a classifier
      head trained for other classes).
    model_fields: the model config fields that must match the saved run's; None: every
      field either records (runtime-only ones aside).
  """

  source_prefix: str = ""
  exclude: tuple[str, ...] = ()
  model_fields: tuple[str, ...] | None = None


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

  def evaluators(self) -> dict[str, Callable[[Any], dict[str, float]]]:
    """Evaluations beyond the held-out loss (zero-shot, retrieval, ...): name -> a function
    of the parameters returning scalar metrics, logged as val_<name>/<metric> at every eval
    (`config.eval.num_batches` = 0 turns evaluation off, these included). They run on every
    process with the whole parameters; only process 0 writes logs."""
    return {}

  def init_from_parts(self, saved_meta: dict) -> InitFromParts:
    """What to take from a run (whose checkpoint metadata is `saved_meta`) that starts this
    one; the default takes all of its parameters and compares every model field."""
    del saved_meta
    return InitFromParts()

  def lr_layers(self) -> tuple[Callable[[tuple[str, ...]], Any], int] | None:
    """For layer-wise learning-rate decay (`config.optim.layer_decay`): (a function from a
    parameter's path names to its depth, 0 for the input embeddings up to `deepest` for
    the head, or an int array of depths along the leading axis of stacked (scanned)
    layers; `deepest`), or None when the model has no such order."""
    return None

  def microbatch_mismatch(self) -> str:
    """Why this task's loss on a batch is not the mean of its losses on equal microbatches,
    even with `batch_totals` ("" when it is). Gradient accumulation
    (`config.train.grad_accum_steps` > 1) would change such a loss, so it is refused."""
    return ""

  def batch_totals(self, batch: dict) -> dict[str, jax.Array]:
    """Counts over a whole batch that its loss divides by (real tokens, say), for a loss that
    is not a mean over examples. Under gradient accumulation each microbatch gets them as
    batch["total/<name>"], one value per row, divided by the number of microbatches: a
    microbatch's loss divided by those is a share, and the shares average to the whole
    batch's loss. {} (the default): a mean over examples, which microbatches split evenly."""
    del batch
    return {}

  def held_out_means(self, means: dict[str, float]) -> dict[str, float]:
    """The held-out metrics from the trainer's means over batches (each weighted by its
    `weight` or `weight/<name>`), for a metric that is not itself such a mean: one combining
    metrics averaged over different things, say. The default: the means unchanged."""
    return means

  def sample(self, params, rng) -> dict[str, Any]:
    """Samples to show a person (texts, image grids). Optional."""
    return {}

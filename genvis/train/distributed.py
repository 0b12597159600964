"""Multi-process start-up: `jax.distributed.initialize` when the config or environment asks.

`config.distributed.initialize`:
- "auto": initialise when a coordinator is named (config or JAX_COORDINATOR_ADDRESS) or the
  host is a worker of a multi-host TPU slice / a SLURM or Open MPI job with several tasks;
- "yes": always (JAX then auto-detects the cluster: TPU pods, SLURM, Open MPI, ...);
- "no": never (one process).
On CPU the cross-process collectives go through gloo, which works over loopback, so the
multi-host code paths are testable on one machine.
"""

import os

import jax
import numpy as np

from genvis.errors import UserError


def _environment_is_multi_process() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if "," in tpu_hosts:
    return True
  for variable in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if int(os.environ.get(variable, "1") or 1) > 1:
      return True
  return False


def maybe_initialize(dist_config) -> bool:
  """Initialise jax.distributed if asked; returns whether it did."""
  mode = dist_config.initialize
  if mode not in ("auto", "yes", "no"):
    raise UserError(f"config.distributed.initialize={mode!r}: expected auto, yes or no")
  explicit = bool(dist_config.coordinator_address) or dist_config.num_processes > 1
  if mode == "no" or (mode == "auto" and not explicit and not _environment_is_multi_process()):
    return False
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs["coordinator_address"] = dist_config.coordinator_address
  if dist_config.num_processes > 0:
    kwargs["num_processes"] = dist_config.num_processes
  if dist_config.process_id >= 0:
    kwargs["process_id"] = dist_config.process_id
  # Only the CPU backend reads this; accelerators keep their own collectives.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  return True


def gather_to_host(array):
  """A (possibly multi-host sharded) jax.Array, whole, as numpy on every process: what
  evaluation and picture code that leaves the jit world needs."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def map_in_chunks(fn, inputs, chunk_size: int, *, out_axis: int = 0):
  """fn over `inputs` in chunks of `chunk_size` rows, as numpy.

  The last chunk is zero-padded to `chunk_size` rows, so one compiled shape serves any number
  of rows. Each output is gathered whole to this host (`gather_to_host`) and its padding
  rows dropped; `out_axis` is the axis of fn's output that runs over the rows, along which the
  outputs are concatenated.
  """
  inputs = np.asarray(inputs)
  outputs = []
  for start in range(0, len(inputs), chunk_size):
    chunk = inputs[start:start + chunk_size]
    rows = len(chunk)
    chunk = np.pad(chunk, [(0, chunk_size - rows)] + [(0, 0)] * (chunk.ndim - 1))
    outputs.append(np.take(gather_to_host(fn(chunk)), np.arange(rows), axis=out_axis))
  return np.concatenate(outputs, axis=out_axis)

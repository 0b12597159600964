"""The device mesh and the logical-to-mesh sharding rules, both from config.

The mesh always has the axes (data, fsdp, tensor). `config.mesh.shape` gives their sizes,
with one -1 filling the remaining devices:

  (-1, 1, 1)  data parallel         batch split over devices, parameters replicated
  (1, -1, 1)  FSDP                  batch and parameters' "embed" dimension split
  (1, 1, -1)  tensor parallel       heads and MLP hidden units split
  (2, 2, 2)   any mix of the three

`config.mesh.rules` maps each logical axis name (genvis/nn/partitioning.py) to mesh axes.
Flax resolves a spec left to right and skips a mesh axis already used in it, so activations
("batch", "length", "embed") shard the batch over (data, fsdp) and keep "embed" whole, while
parameters ("embed", "mlp") shard over (fsdp, tensor).
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from genvis.errors import UserError

AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def mesh_shape(shape, num_devices: int) -> tuple[int, ...]:
  """Resolve one -1 in `config.mesh.shape` against the number of devices."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(AXES):
    raise UserError(f"config.mesh.shape={shape} must give {len(AXES)} sizes for {AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise UserError(f"config.mesh.shape={shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise UserError(f"config.mesh.shape={shape} does not divide the {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise UserError(f"config.mesh.shape={shape} needs {math.prod(shape)} devices, "
                    f"but {num_devices} are available")
  return shape


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
  """A mesh with axis type Auto: Linen's logical constraints need Auto axes."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config.shape, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def rules(mesh_config) -> tuple:
  """The logical axis rules as a tuple of (name, mesh axes) pairs."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in mesh_config.rules)


def logical_shardings(boxed_tree, mesh, axis_rules):
  """NamedShardings for a tree whose leaves may carry logical axis names (nn.Partitioned).

  A dimension that does not divide evenly over its mesh axes (a 65-character vocabulary over
  a tensor axis of 2) is replicated instead, so any model runs on any mesh.
  """
  specs = nn.get_partition_spec(boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, axis_rules)
  return jax.tree.map(_divisible_or_replicated, nn.meta.unbox(boxed_tree), shardings)


def _divisible_or_replicated(leaf, sharding: NamedSharding) -> NamedSharding:
  spec = list(sharding.spec) + [None] * (len(leaf.shape) - len(sharding.spec))
  for dim, axes in enumerate(spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    if leaf.shape[dim] % math.prod(sharding.mesh.shape[a] for a in names):
      spec[dim] = None
  return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def batch_sharding(mesh, axis_rules) -> NamedSharding:
  """Batches are split along their leading dimension like the "batch" logical axis."""
  spec = nn.logical_to_mesh_axes(("batch",), axis_rules)
  return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_spec: dict, sharding: NamedSharding):
  """A batch dimension that does not divide over the mesh is a config error, before compile."""
  axes = sharding.spec[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  ways = int(np.prod([sharding.mesh.shape[a] for a in axes]))
  if ways % jax.process_count():
    raise UserError(f"the batch is split {ways} ways over mesh axes {axes}, which must be a "
                    f"multiple of the {jax.process_count()} processes (each loads its own "
                    "rows); enlarge the data/fsdp sizes in config.mesh.shape")
  for name, spec in batch_spec.items():
    if spec.shape[0] % ways:
      raise UserError(f"batch {name!r} of global size {spec.shape[0]} is not divisible by "
                      f"the {ways} devices of mesh axes {axes} (config.data.batch_size)")

"""Checkpoints through Orbax (the only module that imports it).

- Saves are asynchronous (training continues while files are written), every
  `checkpoint.every` steps, at the end and on preemption; the last `checkpoint.keep` are kept.
- Orbax writes each step into a temporary folder and renames it when complete, so a save cut
  short by a crash is never listed as a checkpoint.
- On restore the newest checkpoint is tried first; if it cannot be read (corrupt files), a
  warning is logged, it is moved aside to `corrupt-<step>` (`-2`, ... if taken; never
  deleted) once an older one has restored, and the next older one is used. With several
  processes this assumes that they all fail on the same checkpoint, as they do when its
  metadata or a file every process reads is damaged. A file only some processes read is not
  handled: those processes would leave Orbax's collective restore early and fall back alone.
- Restoring takes the target's shardings, so a checkpoint written on one mesh restores onto
  another.
- Each checkpoint stores the task's metadata (model config, tokenizer) as JSON next to the
  arrays; a resume whose model differs is refused with a message naming the fields, and so
  is one whose state holds other arrays (an EMA or optimizer setting changed since).
- `ParamsSource` reads just the parameters of another run's checkpoint (fine-tuning from a
  pre-trained model), onto the new model's shardings.
"""

import logging
import os
from typing import Any, Callable

import orbax.checkpoint as ocp

from genvis.errors import UserError, one_line

log = logging.getLogger(__name__)


class Checkpointer:
  """Periodic async checkpoints of a train state plus JSON metadata, in one directory."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """Every `every` steps (the trainer also saves at the end and on preemption)."""
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, meta: dict) -> bool:
    """Start an async save of `step` (returns once the arrays are copied off the devices)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return self._manager.save(step, args=args, force=True)

  def reached_preemption(self, step: int) -> bool:
    """True on every process once any was told to stop (multi-process: a synced decision)."""
    return self._manager.reached_preemption(step)

  def read_meta(self, step: int) -> dict:
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return self._manager.restore(step, args=args)["meta"]

  def restore(self, abstract_state, check_meta: Callable[[dict, str], None] | None = None,
              part_keys: dict[str, str] | None = None) -> tuple[Any, dict, int] | None:
    """(state, meta, step) from the newest readable checkpoint, or None if there is none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: the arrays are laid
    out as it says, whatever mesh wrote them. `check_meta` may raise UserError to refuse a
    checkpoint of a different model; that error is not treated as corruption, and neither is
    a checkpoint whose arrays sit at other paths than the target's (a UserError naming the
    state's parts that differ and, from `part_keys`, the config key behind each part).
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    unreadable = []
    for candidate in steps:
      where = f"{self.directory}/{candidate}"
      try:
        meta = self.read_meta(candidate)
        saved_tree = self._state_tree(candidate)
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((candidate, e))
        continue
      if check_meta is not None:
        check_meta(meta, where)
      difference = _layout_difference(saved_tree, abstract_state, part_keys or {})
      if difference:
        raise UserError(f"checkpoint {where} holds a different train state: {difference}")
      try:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        state = self._manager.restore(candidate, args=args)["state"]
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((candidate, e))
        continue
      self._set_aside(unreadable)
      return state, meta, candidate
    if unreadable:
      first_step, first_error = unreadable[0]
      raise UserError(f"no checkpoint in {self.directory} could be restored; step {first_step}: "
                      f"{one_line(first_error)}")
    return None

  def _state_tree(self, step: int):
    """The saved state's tree of array metadata (read from its files, no arrays loaded)."""
    with ocp.PyTreeCheckpointer() as reader:
      return reader.metadata(os.path.join(self.directory, str(step), "state")).item_metadata.tree

  def _set_aside(self, unreadable):
    """Move checkpoints that failed to restore out of Orbax's view, keeping their files."""
    for step, error in unreadable:
      log.warning("checkpoint step %d in %s is unreadable (%s); restored an older one",
                  step, self.directory, one_line(error))
      source = os.path.join(self.directory, str(step))
      if os.path.isdir(source) and _is_primary_process():
        os.replace(source, _free_name(os.path.join(self.directory, f"corrupt-{step}")))
    if unreadable:
      _barrier("genvis_checkpoint_set_aside")  # every process must see the rename
      self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


class ParamsSource:
  """Read-only access to the parameters of one checkpoint of another run (fine-tuning's
  `config.init_from`): its metadata, the shapes of its parameters, and a restore of just those
  arrays onto the caller's shardings (the optimizer state is never read).

  `path` is a run's workdir or its checkpoints folder (the newest readable step is used; as on
  resume, an unreadable one falls back to the one before, with a warning, but nothing of the
  other run is moved) or one checkpoint, workdir/checkpoints/<step>; `key` names the config
  key in errors.
  """

  def __init__(self, path: str, key: str):
    self.directory, self._candidates = _find_checkpoints(path, key)
    options = ocp.CheckpointManagerOptions(create=False)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    state_tree = None
    for step in list(self._candidates):
      self.step, self.where = step, f"{self.directory}/{step}"
      try:
        state_tree = self._manager.item_metadata(step)["state"].tree
        break
      except Exception as e:  # pylint: disable=broad-except
        self._candidates.remove(step)
        if not self._candidates:
          self._manager.close()
          raise UserError(f"{key}: cannot read checkpoint {self.where}: {one_line(e)}") from None
        log.warning("checkpoint %s is unreadable (%s); trying an older one", self.where,
                    one_line(e))
    # A run that kept an EMA of its parameters is represented by it (as in pretrained.py).
    self.item = "ema_params" if state_tree.get("ema_params") is not None else "params"
    self.param_shapes = _shapes(state_tree[self.item])

  def read_meta(self) -> dict:
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    return self._manager.restore(self.step, args=args)["meta"]

  def subtree_target(self, abstract_params, prefix: str = "",
                     exclude: tuple[str, ...] = ()) -> tuple[Any, list[str], int]:
    """(the restore target, the names of the parameters of `abstract_params` it does not
    fill, how many checkpoint parameters it leaves out).

    The checkpoint's parameters under `prefix` ("vit": an MAE's encoder; "": all of them),
    less the names in `exclude` directly below it, go to the same paths at the root of
    `abstract_params` (the new model's tree of jax.ShapeDtypeStruct with shardings): each
    must be there with the same shape and dtype (else a UserError that names the parameter
    and both shapes). The target keeps the checkpoint's own paths, prefix included.
    """
    from flax import traverse_util  # pylint: disable=import-outside-toplevel
    saved = traverse_util.flatten_dict(self.param_shapes, sep="/")
    head = f"{prefix}/" if prefix else ""
    taken = {name[len(head):]: array for name, array in saved.items()
             if name.startswith(head) and name[len(head):].split("/")[0] not in exclude}
    if not taken:
      raise UserError(f"checkpoint {self.where} has no parameters under {prefix!r}")
    ours = traverse_util.flatten_dict(abstract_params, sep="/")
    for name, array in taken.items():
      if name not in ours:
        raise UserError(f"parameter {head}{name} {list(array.shape)} of checkpoint "
                        f"{self.where} is not in this model (a different architecture?)")
      if (array.shape, array.dtype) != (ours[name].shape, ours[name].dtype):
        raise UserError(f"parameter {head}{name} is {array.dtype}{list(array.shape)} in "
                        f"checkpoint {self.where} but {ours[name].dtype}"
                        f"{list(ours[name].shape)} in this model")
    target = traverse_util.unflatten_dict({head + name: ours[name] for name in taken},
                                          sep="/")
    return target, sorted(set(ours) - set(taken)), len(saved) - len(taken)

  def restore(self, target):
    """The parameters in `target` (from `subtree_target`), laid out as it says; an older
    checkpoint of the same run if this one's arrays cannot be read."""
    item = {self.item: target}
    args = ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(item))
    for step in self._candidates[self._candidates.index(self.step):]:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(state=args))
        return restored["state"][self.item]
      except Exception as e:  # pylint: disable=broad-except
        error = e
        log.warning("checkpoint %s/%d is unreadable (%s); trying an older one",
                    self.directory, step, one_line(e))
    raise UserError(f"no checkpoint of {self.directory} could be restored: "
                    f"{one_line(error)}")

  def close(self):
    self._manager.close()


def _free_name(path: str) -> str:
  """`path`, or `path`-2, -3, ... if taken (the same step can be set aside more than once)."""
  candidate, n = path, 1
  while os.path.exists(candidate):
    n += 1
    candidate = f"{path}-{n}"
  return candidate


def _array_paths(tree) -> dict[str, set[tuple[str, ...]]]:
  """Top-level part -> the paths of its arrays below it, as tuples of names."""
  import jax  # pylint: disable=import-outside-toplevel
  def name(key):
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        return str(getattr(key, attribute))
    return str(key)
  parts = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = tuple(name(key) for key in path)
    parts.setdefault(names[0], set()).add(names[1:])
  return parts


def _layout_difference(saved_tree, target, part_keys: dict[str, str]) -> str:
  """'' if the saved arrays sit at the target's paths; else which top-level parts differ."""
  saved, wanted = _array_paths(saved_tree), _array_paths(target)
  differences = []
  for part in sorted(set(saved) | set(wanted)):
    here, there = wanted.get(part, set()), saved.get(part, set())
    if here == there:
      continue
    detail = (f"has {len(there)} arrays in the checkpoint, {len(here)} in this run"
              if len(here) != len(there) else "has its arrays at other paths than this run's")
    hint = f" (did {part_keys[part]} change?)" if part in part_keys else ""
    differences.append(f"{part} {detail}{hint}")
  return "; ".join(differences)


def _shapes(tree_metadata):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree_metadata)


def _checkpoint_steps(directory: str) -> list[int]:
  """Steps with a complete checkpoint (Orbax renames a step's folder to its number only once
  it is written; corrupt ones were moved to corrupt-<step>[-n])."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name, "state")))


def _find_checkpoints(path: str, key: str) -> tuple[str, list[int]]:
  """(checkpoints folder, candidate steps newest first) that `path` names: one step if it
  names a checkpoint, else every step of the run."""
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise UserError(f"{key}={path!r}: no such directory")
  name = os.path.basename(path)
  if name.isdigit() and os.path.isdir(os.path.join(path, "state")):
    return os.path.dirname(path), [int(name)]
  for directory in (os.path.join(path, "checkpoints"), path):
    steps = _checkpoint_steps(directory)
    if steps:
      return directory, steps[::-1]
  raise UserError(f"{key}={path!r} holds no checkpoint; expected a run's workdir or one of "
                  "its checkpoints, workdir/checkpoints/<step>")


def _is_primary_process() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def _barrier(name: str):
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)

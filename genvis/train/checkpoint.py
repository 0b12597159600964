"""Checkpoints through Orbax (the only module that imports it).

- Saves are asynchronous (training continues while files are written), every
  `checkpoint.every` steps, at the end and on preemption; the last `checkpoint.keep` are kept.
- Orbax writes each step into a temporary folder and renames it when complete, so a save cut
  short by a crash is never listed as a checkpoint.
- On restore the newest checkpoint is tried first; if it cannot be read (corrupt files), a
  warning is logged, it is moved aside to `corrupt-<step>` (never deleted) once an older one
  has restored, and the next older one is used.
- Restoring takes the target's shardings, so a checkpoint written on one mesh restores onto
  another.
- Each checkpoint stores the task's metadata (model config, tokenizer) as JSON next to the
  arrays; a resume whose model differs is refused with a message naming the fields.
"""

import logging
import os
from typing import Any, Callable

import orbax.checkpoint as ocp

from genvis.errors import UserError

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

  def restore(self, abstract_state, check_meta: Callable[[dict, str], None] | None = None
              ) -> tuple[Any, dict, int] | None:
    """(state, meta, step) from the newest readable checkpoint, or None if there is none.

    `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings: the arrays are laid
    out as it says, whatever mesh wrote them. `check_meta` may raise UserError to refuse a
    checkpoint of a different model; that error is not treated as corruption.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    unreadable = []
    for candidate in steps:
      try:
        meta = self.read_meta(candidate)
      except Exception as e:  # pylint: disable=broad-except
        unreadable.append((candidate, e))
        continue
      if check_meta is not None:
        check_meta(meta, f"{self.directory}/{candidate}")
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
                      f"{_one_line(first_error)}")
    return None

  def _set_aside(self, unreadable):
    """Move checkpoints that failed to restore out of Orbax's view, keeping their files."""
    for step, error in unreadable:
      log.warning("checkpoint step %d in %s is unreadable (%s); restored an older one",
                  step, self.directory, _one_line(error))
      source = os.path.join(self.directory, str(step))
      if os.path.isdir(source) and _is_primary_process():
        os.replace(source, os.path.join(self.directory, f"corrupt-{step}"))
    if unreadable:
      _barrier("genvis_checkpoint_set_aside")  # every process must see the rename
      self._manager.reload()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


def _one_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _is_primary_process() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def _barrier(name: str):
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)

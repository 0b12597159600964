"""A clean stop on SIGTERM (what TPU VMs and most schedulers send before preemption).

One process: a SIGTERM handler sets a flag and the loop saves and exits at the next step.
Several processes: JAX's distributed preemption service receives the signal and Orbax's
`reached_preemption(step)` makes every process agree on the same step, so they all save it.
"""

import signal
import threading


class StopSignal:
  """Whether training should stop now, after the step just taken."""

  def __init__(self, install: bool = True):
    self._flag = False
    self._previous = None
    self._installed = install and threading.current_thread() is threading.main_thread()
    if self._installed:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self._flag = True

  def requested(self, step: int, checkpointer) -> bool:
    if self._installed:
      return self._flag
    return checkpointer.reached_preemption(step)

  def uninstall(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

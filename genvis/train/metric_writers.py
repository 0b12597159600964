"""Where metrics go: metrics.jsonl, TensorBoard event files, and a loss-curve PNG.

Only process 0 writes. TensorBoard events go through genvis/train/event_file.py, so logging never
imports TensorFlow.
"""

import json
import logging
import os

from genvis import atomic_files
from genvis.train.event_file import EventFileWriter

log = logging.getLogger(__name__)


class MetricWriter:
  """Appends {"step": s, **metrics} to workdir/metrics.jsonl and to TensorBoard scalars."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

  @property
  def jsonl_path(self) -> str:
    return os.path.join(self.workdir, "metrics.jsonl")

  def write(self, step: int, metrics: dict):
    """Appends one line (a resume's `drop_after` rewrites the file whole, through
    atomic_files, dropping any line a crash cut short)."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with open(self.jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._tb.scalars(step, scalars)

  def drop_after(self, step: int):
    """Forget jsonl records after `step`: a resumed run logs those steps again."""
    if not self.enabled or not os.path.exists(self.jsonl_path):
      return
    kept = [r for r in read_metrics(self.workdir) if r["step"] <= step]
    atomic_files.write_text(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The records of workdir/metrics.jsonl. A line that is not JSON (an append cut short by a
  crash or a full disk) is skipped with a warning: a resume rewrites the file without it."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        log.warning("%s line %d is not a JSON record (a write cut short?); skipped",
                    path, number)
  return records


def plot_loss_curve(workdir: str, filename: str = "loss.png") -> str | None:
  """Training and validation loss against step, from metrics.jsonl, as a PNG."""
  records = read_metrics(workdir)
  train = [(r["step"], r["loss"]) for r in records if "loss" in r]
  val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
  if not train and not val:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for points, label in ((train, "train"), (val, "validation")):
    if points:
      ax.plot(*zip(*points), label=label, marker="o" if len(points) < 30 else None)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")  # the task's own: nats per token, per image pair, ...
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, filename)
  fig.savefig(path)
  plt.close(fig)
  return path

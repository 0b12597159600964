"""Scatter plots of 2-D points as uint8 pictures, for a person to look at toy-density samples.

The trainer writes any uint8 [H, W, C] picture a task's sample hook returns as a PNG
(image_grid.save_png), so a plot is rendered off-screen (matplotlib's Agg backend, no display
needed) into an RGB array: one panel per point set, side by side, on shared axes, so a
dropped mode or a smeared ridge shows against the data's panel.
"""

import numpy as np

PANEL_INCHES = 3.0
DPI = 80
MAX_POINTS = 5000  # per panel: more only slows the drawing down


def scatter_panels(panels, *, limit: float | None = None) -> np.ndarray:
  """One RGB uint8 picture [H, W, 3] with a panel per (title, points [N, 2], labels [N] or
  None); labelled points are coloured by label. `limit`: axes span [-limit, limit] (default:
  the largest |coordinate| of the first panel, plus 10 %)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  panels = [(title, np.asarray(points, np.float32)[:MAX_POINTS],
             None if labels is None else np.asarray(labels)[:MAX_POINTS])
            for title, points, labels in panels]
  for title, points, _ in panels:
    if points.ndim != 2 or points.shape[1] != 2:
      raise ValueError(f"scatter panel {title!r}: expected points [N, 2], got {points.shape}")
  if limit is None:
    first = panels[0][1]
    limit = 1.1 * float(np.max(np.abs(first))) if first.size else 1.0
  figure, axes = plt.subplots(1, len(panels), figsize=(PANEL_INCHES * len(panels),
                                                       PANEL_INCHES), dpi=DPI, squeeze=False)
  try:
    for axis, (title, points, labels) in zip(axes[0], panels):
      finite = np.all(np.isfinite(points), axis=1)
      colours = None if labels is None else labels[finite]
      axis.scatter(points[finite, 0], points[finite, 1], s=2, c=colours,
                   cmap="tab10" if labels is not None else None, alpha=0.6, linewidths=0)
      axis.set_xlim(-limit, limit)
      axis.set_ylim(-limit, limit)
      axis.set_aspect("equal")
      axis.set_title(title, fontsize=9)
      axis.tick_params(labelsize=7)
    figure.tight_layout()
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
  finally:
    plt.close(figure)

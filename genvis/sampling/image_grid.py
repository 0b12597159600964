"""Grids of images as PNGs: samples, completions and reconstructions, for a person to look at.

Every image family shows its results the same way: a [rows, columns] table of images in
[-1, 1] (original | given half | completions, or original | masked | reconstruction) tiled
into one picture with a thin border, enlarged by an integer factor so 8x8 digits stay
visible, and written atomically to the workdir.
"""

import numpy as np
from PIL import Image

from genvis.atomic_files import replacing

BORDER_VALUE = 255  # white lines between cells


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats -> uint8 in 0..255 (clipped)."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile(table, *, border: int = 1, scale: int = 1) -> np.ndarray:
  """One uint8 picture [H', W', C] from images [rows, cols, H, W, C] in [-1, 1].

  `scale` enlarges every pixel to a scale x scale block (nearest neighbour: pixels stay
  sharp); `border` pixels of white separate the cells.
  """
  table = np.asarray(table)
  if table.ndim != 5:
    raise ValueError(f"tile expects [rows, cols, H, W, C] images, got shape {table.shape}")
  cells = to_uint8(table)
  if scale > 1:
    cells = cells.repeat(scale, axis=2).repeat(scale, axis=3)
  rows, cols, height, width, channels = cells.shape
  out = np.full((rows * (height + border) + border, cols * (width + border) + border, channels),
                BORDER_VALUE, np.uint8)
  for r in range(rows):
    for c in range(cols):
      top, left = border + r * (height + border), border + c * (width + border)
      out[top:top + height, left:left + width] = cells[r, c]
  return out


def default_scale(height: int, target: int = 64) -> int:
  """An integer enlargement that makes a cell about `target` pixels tall (at least 1)."""
  return max(1, target // max(height, 1))


def save_png(path: str, picture: np.ndarray) -> None:
  """Writes a uint8 [H, W, 1 or 3] picture as a PNG, atomically."""
  picture = np.asarray(picture)
  if picture.ndim != 3 or picture.shape[-1] not in (1, 3) or picture.dtype != np.uint8:
    raise ValueError(f"save_png expects uint8 [H, W, 1 or 3], got {picture.dtype} "
                     f"{picture.shape}")
  image = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
  with replacing(path) as temporary:
    image.save(temporary, format="PNG")

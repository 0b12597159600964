"""The embedded image dataset: scikit-learn's handwritten digits, with a fixed test split.

Every image family (ImageGPT, MAE, CLIP, diffusion) needs a real image dataset that runs
offline on any machine, in seconds. `sklearn.datasets.load_digits` ships with scikit-learn
(no download): 1,797 handwritten digits, 8x8 pixels, 17 grey levels (0..16), 10 classes.

Conventions shared by every image family, so models, palettes and probes can be swapped:
- images are float32 `[N, H, W, C]` in [-1, 1] (here C = 1); grey level g maps to g / 8 - 1,
  which is exact in float32, so the 17 levels survive a round trip through a palette;
- labels are int32 `[N]` class ids (0..9).

The split is stratified and deterministic: for each class, a permutation seeded by `seed`
puts floor(n_class / 4) of its images in "test" and the rest in "train". With the default
seed that is 1,352 train and 445 test images (test per class 0..9: 44, 45, 44, 45, 45, 45,
45, 44, 43, 45). Within a split, images keep the dataset's order; batch order is the
batcher's job (genvis/data/batching.py), not the source's.
"""

import functools

import jax
import numpy as np

from genvis.errors import UserError

SPLITS = ("train", "test")
TEST_FRACTION_DENOMINATOR = 4  # floor(n_class / 4) images of each class are held out.
NUM_CLASSES = 10
NUM_GREY_LEVELS = 17
NATIVE_SIZE = 8
RESIZE_METHODS = ("nearest", "bilinear")


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
  """(grey levels [1797, 8, 8] uint8 in 0..16, labels [1797] int32), read once per process."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  bunch = datasets.load_digits()
  return bunch.images.astype(np.uint8), bunch.target.astype(np.int32)


def split_indices(labels: np.ndarray, split: str, seed: int) -> np.ndarray:
  """Indices of `split` in a stratified split of `labels`, in ascending order.

  For each class, a permutation from `np.random.default_rng(seed)` (classes drawn in
  ascending order) sends its first floor(n / 4) members to "test". "train" and "test" of the
  same seed are disjoint and together cover every index.
  """
  rng = np.random.default_rng(seed)
  test = []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    test.append(members[:len(members) // TEST_FRACTION_DENOMINATOR])
  is_test = np.zeros(len(labels), dtype=bool)
  is_test[np.concatenate(test)] = True
  return np.flatnonzero(is_test if split == "test" else ~is_test)


def _target_size(size) -> tuple[int, int] | None:
  """`size` (None, an int, or (height, width)) as (height, width), or None for native 8x8."""
  if size is None:
    return None
  is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  pair = (size, size) if is_int(size) else size
  if not (isinstance(pair, (tuple, list)) and len(pair) == 2
          and all(is_int(v) and v >= 1 for v in pair)):
    raise UserError(f"load_digits size={size!r}: expected None, a positive int or a "
                    f"(height, width) pair of positive ints")
  return int(pair[0]), int(pair[1])


def resize_images(images: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
  """`[N, H, W, C]` images resized to `size` with `jax.image.resize`.

  "nearest" copies the nearest source pixel, so the output holds only the input's values
  (the 17 grey levels stay 17 levels, and a grey-level palette still quantises exactly).
  "bilinear" interpolates linearly (triangle filter, antialiased when shrinking), which is
  smoother but produces in-between values; the result stays in [-1, 1].
  """
  shape = (images.shape[0], *size, images.shape[3])
  resized = jax.image.resize(images, shape, method=method)
  return np.clip(np.asarray(resized, dtype=np.float32), -1.0, 1.0)


def load_digits(split: str = "train", size=None, seed: int = 0,
                method: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
  """The digits of one split, as images in [-1, 1] and class labels.

  Args:
    split: "train" (1,352 images with seed 0) or "test" (445 images).
    size: None for the native 8x8, an int for square images, or (height, width). Resizing
      uses `method`, see `resize_images`.
    seed: selects the stratified split; use the same seed for train and test.
    method: "nearest" (keeps the 17 grey levels) or "bilinear" (smooth, in-between values).

  Returns:
    (images float32 [N, H, W, 1] in [-1, 1], labels int32 [N] in 0..9), as numpy arrays.

  Raises:
    UserError: one line naming `split`, `size` or `method` when it is not valid.
  """
  if split not in SPLITS:
    raise UserError(f"load_digits split={split!r}: expected one of {', '.join(SPLITS)}")
  if method not in RESIZE_METHODS:
    raise UserError(f"load_digits method={method!r}: expected one of "
                    f"{', '.join(RESIZE_METHODS)}")
  target = _target_size(size)
  grey, labels = _raw_digits()
  rows = split_indices(labels, split, seed)
  images = (grey[rows].astype(np.float32) / 8.0 - 1.0)[..., None]
  if target is not None and target != (NATIVE_SIZE, NATIVE_SIZE):
    images = resize_images(images, target, method)
  return images, labels[rows].copy()

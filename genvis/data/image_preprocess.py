"""The one preprocessing path every image source goes through: channels, resize, crop, scale,
and train-time augmentation.

Why one path: ImageGPT, MAE, CLIP and diffusion compare numbers across datasets (bits/dim,
FID, probe accuracy) that depend on how pixels were resized and scaled. When tfds datasets and
plain folders share these few numpy/PIL functions, a 32x32 CIFAR image and a 32x32 image from
a folder are made the same way, and no TensorFlow op (whose resize differs from PIL's) decides
the pixels.

Resizing uses PIL's BICUBIC filter without `reducing_gap`. PIL resamples by convolution with
the filter's support widened by the reduction factor, so shrinking (ImageNet or CelebA to
32 px) is antialiased like an area average, not aliased like `tf.image.resize` without
`antialias`; bicubic keeps edges sharper than BOX or BILINEAR, and enlarging (MNIST 28 -> 32)
stays smooth. `reducing_gap` would first shrink by an integer factor with a box filter: faster
for huge images, but the result would then depend on that factor.

Augmentation is a pure function of integers: row `i` of a batch is flipped and cropped by
`np.random.default_rng([*key_ints, row_id])`, so `(seed, step)` and the row's position in the
global batch give the same pixels on any host, and a resumed run sees the batches it would
have seen.
"""

import numpy as np
from PIL import Image

from genvis.errors import UserError

CHANNEL_CHOICES = (0, 1, 3)  # 0: as the data is (grey stays 1 channel, colour 3).

# A transparent pixel has no defined colour (often black); it is shown over this background,
# as an image viewer or web page would show it.
ALPHA_BACKGROUND = 255


def to_unit_range(images: np.ndarray) -> np.ndarray:
  """uint8 pixels (any shape) as float32 in [-1, 1]: 0 -> -1, 255 -> 1, via x / 127.5 - 1."""
  if images.dtype != np.uint8:
    raise UserError(f"to_unit_range expects uint8 pixels, got dtype {images.dtype}")
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _flatten_alpha(image: Image.Image) -> Image.Image:
  """`image` without transparency, composited over `ALPHA_BACKGROUND` (grey or RGB)."""
  if image.mode == "P":  # A palette may carry transparency; resolve it first.
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode == "PA":
    image = image.convert("RGBA")
  if image.mode not in ("LA", "La", "RGBA", "RGBa"):
    return image
  grey = image.mode in ("LA", "La")
  flat_mode = "L" if grey else "RGB"
  background = Image.new(flat_mode, image.size,
                         ALPHA_BACKGROUND if grey else (ALPHA_BACKGROUND,) * 3)
  background.paste(image.convert(flat_mode), mask=image.getchannel("A"))
  return background


def is_grey_mode(mode: str) -> bool:
  """Whether a PIL mode holds one value per pixel (1, L, LA, I, I;16, F): grey data."""
  return mode in ("1", "L", "LA", "La") or mode.startswith("I") or mode == "F"


def convert_channels(image: Image.Image, channels: int) -> Image.Image:
  """`image` as mode "L" (channels=1) or "RGB" (channels=3), or whichever of the two matches
  its data (channels=0); transparency is flattened onto a white background.

  Colour to grey uses PIL's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B); 16-bit grey
  (modes "I;16", "I") is scaled to 8 bits (x / 257).
  """
  if channels not in CHANNEL_CHOICES:
    raise UserError(f"config.data.channels={channels!r}: expected 0 (as the data is), 1 or 3")
  grey = is_grey_mode(image.mode)
  if image.mode.startswith("I"):
    # 16-bit grey (PNG): PIL's own conversion to "L" clips every value above 255 to white.
    wide = np.asarray(image, dtype=np.float64)
    image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8))
  image = _flatten_alpha(image)
  if channels == 0:
    channels = 1 if grey else 3
  mode = "L" if channels == 1 else "RGB"
  return image if image.mode == mode else image.convert(mode)


def array_to_pil(image: np.ndarray) -> Image.Image:
  """A uint8 [H, W, C] array (C = 1, 2, 3 or 4: L, LA, RGB, RGBA) as a PIL image."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
    raise UserError(f"expected a uint8 image [H, W, C] with C in 1..4, got {image.dtype} "
                    f"{list(image.shape)}")
  # PIL infers the mode from the shape: L, LA, RGB, RGBA.
  return Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)


def pil_to_array(image: Image.Image) -> np.ndarray:
  """A mode "L" or "RGB" PIL image as uint8 [H, W, 1 or 3]."""
  pixels = np.asarray(image, dtype=np.uint8)
  return pixels[..., None] if pixels.ndim == 2 else pixels


def resize_and_center_crop_pil(image: Image.Image, resolution: int) -> Image.Image:
  """The centre square of `image`, resized to `resolution` x `resolution` (0: no change).

  This is "resize the shorter side to `resolution`, then crop the centre" done in one
  resampling: cropping the centred square first, in the source's (fractional) pixel
  coordinates, and resizing that square gives the same image without rounding the longer
  side to whole pixels, so the crop is centred to a fraction of a pixel.
  """
  width, height = image.size
  if resolution == 0 or (width, height) == (resolution, resolution):
    return image
  side = min(width, height)
  left, top = (width - side) / 2, (height - side) / 2
  return image.resize((resolution, resolution), Image.Resampling.BICUBIC,
                      box=(left, top, left + side, top + side))


def resize_and_center_crop(image: np.ndarray, resolution: int,
                           channels: int = 0) -> np.ndarray:
  """One uint8 image [H, W, C] as uint8 [resolution, resolution, C'] (see
  `resize_and_center_crop_pil`); `resolution=0` keeps its size.

  Args:
    image: uint8 [H, W, C], C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA).
    resolution: the output side in pixels; 0 keeps H x W (only the channels change).
    channels: 1 (grey), 3 (RGB) or 0: as the data is (C' = 1 for C in 1, 2; else 3).

  Returns:
    uint8 [resolution, resolution, C'].
  """
  pil = convert_channels(array_to_pil(image), channels)
  return pil_to_array(resize_and_center_crop_pil(pil, resolution))


def set_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """float images [N, H, W, C] in [-1, 1] with C = 1 or 3 as `channels` (0: unchanged):
  grey is repeated into RGB, RGB becomes ITU-R 601-2 luma, as `convert_channels` does."""
  if channels not in CHANNEL_CHOICES:
    raise UserError(f"config.data.channels={channels!r}: expected 0 (as the data is), 1 or 3")
  have = images.shape[-1]
  if channels in (0, have):
    return images
  if channels == 3:
    return np.repeat(images, 3, axis=-1)
  luma = np.asarray([0.299, 0.587, 0.114], np.float32)
  return (images @ luma)[..., None].astype(np.float32)


def augment(images: np.ndarray, key_ints, *, flip: bool, random_crop_padding: int = 0,
            row_ids=None) -> np.ndarray:
  """Train-time augmentation of a batch, as a pure function of integers.

  Row `i` draws from `np.random.default_rng([*key_ints, row_ids[i]])`: when
  `random_crop_padding` = p > 0, a crop of the original size at a uniform offset in
  [0, 2p] x [0, 2p] from the image padded by p on every side; then, when `flip`, a left-right
  mirror with probability 1/2. The padding reflects the image (mode "reflect") rather than
  adding black bars, which a generative model would otherwise learn to draw. Both draws are
  made whatever the options, so turning flipping on or off leaves the crops unchanged.

  Args:
    images: float [B, H, W, C]; not modified.
    key_ints: a sequence of non-negative ints, e.g. (seed, step).
    flip: whether to mirror rows left-right with probability 1/2.
    random_crop_padding: p >= 0; 0 turns cropping off. Must be smaller than H and W.
    row_ids: non-negative int [B], each row's position in the global batch, so that a host
      holding rows 128..255 augments them as one host holding all rows would; default
      0..B-1.

  Returns:
    The augmented batch, same shape and dtype.
  """
  batch, height, width = images.shape[:3]
  padding = int(random_crop_padding)
  if padding < 0 or (padding and padding >= min(height, width)):
    raise UserError(f"config.data.random_crop_padding={random_crop_padding}: expected 0 or "
                    f"1..{min(height, width) - 1} for {height}x{width} images")
  row_ids = np.arange(batch) if row_ids is None else np.asarray(row_ids)
  if row_ids.shape != (batch,):
    raise UserError(f"augment row_ids has shape {list(row_ids.shape)}, expected [{batch}]")
  key = [int(k) for k in key_ints]
  out = np.empty_like(images)
  for row in range(batch):
    rng = np.random.default_rng([*key, int(row_ids[row])])
    mirror = rng.random() < 0.5
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    image = images[row]
    if padding:
      padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode="reflect")
      image = padded[dy:dy + height, dx:dx + width]
    out[row] = image[:, ::-1] if flip and mirror else image
  return out

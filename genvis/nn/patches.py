"""Images as sequences of flattened patches, and back (ViT, MAE, DiT).

A [B, H, W, C] image (channels last, as everywhere in genvis) is cut into non-overlapping
p x p patches. Patches are numbered row-major: patch k sits at grid row k // (W/p) and grid
column k % (W/p). Inside a patch the p*p*C values are ordered (py, px, c): pixel row, then
pixel column, then channel, channel fastest. This is the order of MAE's `patchify` and of
Hugging Face's ViTMAEForPreTraining.patchify, so MAE's per-patch targets (and their
normalisation) line up with theirs, and a Dense layer on these vectors is the stride-p
convolution of ViT's patch embedding with its [p, p, C, D] kernel flattened in that order.
"""

import jax.numpy as jnp

from genvis.errors import UserError


def grid_size(image_size: int, patch_size: int) -> int:
  """Patches per side of a square image; a UserError when the patch does not tile it."""
  if patch_size < 1 or image_size < 1:
    raise UserError(f"config.model.image_size={image_size} and config.model.patch_size="
                    f"{patch_size} must both be >= 1")
  if image_size % patch_size:
    raise UserError(f"config.model.image_size={image_size} is not divisible by "
                    f"config.model.patch_size={patch_size}: patches must tile the image")
  return image_size // patch_size


def patchify(images, patch_size: int):
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches row-major, values (py, px, c)."""
  batch, height, width, channels = images.shape
  if height % patch_size or width % patch_size:
    raise UserError(f"images of shape {tuple(images.shape)} (B, H, W, C) do not split into "
                    f"config.model.patch_size={patch_size} patches: H and W must be multiples")
  rows, cols = height // patch_size, width // patch_size
  x = images.reshape(batch, rows, patch_size, cols, patch_size, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # [B, rows, cols, py, px, C]
  return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches, patch_size: int, height: int, width: int):
  """The inverse of `patchify`: [B, N, p*p*C] -> [B, height, width, C]."""
  batch, num_patches, patch_dim = patches.shape
  rows, cols = height // patch_size, width // patch_size
  channels = patch_dim // (patch_size * patch_size)
  if (height % patch_size or width % patch_size or num_patches != rows * cols
      or patch_dim != patch_size * patch_size * channels):
    raise UserError(f"patches of shape {tuple(patches.shape)} do not form a {height}x{width} "
                    f"image with config.model.patch_size={patch_size}")
  x = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # [B, rows, py, cols, px, C]
  return x.reshape(batch, height, width, channels)

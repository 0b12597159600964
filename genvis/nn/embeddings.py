"""Fixed sinusoidal position embeddings, 1-D and 2-D (MAE, DiT, ViT with `pos_embedding=
"sincos"`).

MAE (He et al. 2021) gives every patch a fixed 2-D sin-cos embedding: half of the width
encodes one grid coordinate, half the other, each half with the Transformer's 1-D formula

    emb(pos)[i]         = sin(pos * omega_i)   for i < d/2      (d: the half's width)
    emb(pos)[d/2 + i]   = cos(pos * omega_i),  omega_i = 1 / 10000^(2i / d).

Which coordinate comes first matters for loading checkpoints: MAE's `util/pos_embed.py`
(and DiT, and Hugging Face transformers 4.x) build the grid with `np.meshgrid(grid_w, grid_h)`
("here w goes first"), so the first half encodes the column and the second half the row. We
follow that. transformers 5.x's `build_2d_sinusoidal_position_embedding` puts the row first
(the same vectors with the two halves swapped); tests/models/test_vit.py checks both facts.

These are numpy constants computed once in float64 (as MAE does) and returned as float32:
they are not parameters, so nothing trains or checkpoints them.
"""

import numpy as np

from genvis.errors import UserError


def sincos_1d(positions, dim: int) -> np.ndarray:
  """[M] positions -> [M, dim]: sin of pos * omega in the first half, cos in the second."""
  if dim % 2:
    raise UserError(f"a 1-D sin-cos embedding needs an even width, got {dim}")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.outer(np.asarray(positions, np.float64).reshape(-1), omega)  # [M, dim/2]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int, cls_token: bool = False,
              config_key: str = "config.model.d_model") -> np.ndarray:
  """Fixed embeddings of a grid_h x grid_w patch grid, [(1 +) grid_h*grid_w, dim] float32.

  Rows follow the patches' row-major order (genvis.nn.patches). The first dim/2 values
  encode the patch's column, the last dim/2 its row (MAE's layout). With `cls_token`, a row
  of zeros is prepended for the class token, as MAE does. `config_key` names the width's
  config key in the error raised when dim is not a multiple of 4.
  """
  if dim % 4 or dim < 4:
    raise UserError(f"{config_key}={dim}: 2-D sin-cos position embeddings need a width "
                    "divisible by 4 (sin and cos for each of two coordinates)")
  rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
  embedding = np.concatenate([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], axis=1)
  if cls_token:
    embedding = np.concatenate([np.zeros((1, dim)), embedding], axis=0)
  return embedding.astype(np.float32)

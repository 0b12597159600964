"""map_in_chunks: one compiled shape for any number of rows, padding dropped, any row axis."""

import jax
import jax.numpy as jnp
import numpy as np

from genvis.train.distributed import map_in_chunks


def test_chunks_have_one_shape_and_the_padding_is_dropped():
  shapes = []

  @jax.jit
  def layers(x):  # [B, 3] -> [2, B, 3]: the rows on axis 1, as ImageGPT's layer features
    shapes.append(x.shape)  # runs once per compiled shape
    return jnp.stack([x + 1.0, 2.0 * x])

  inputs = np.arange(33, dtype=np.float32).reshape(11, 3)  # 11 rows: chunks of 4, 4, 3 + 1 pad
  out = map_in_chunks(layers, inputs, 4, out_axis=1)
  assert shapes == [(4, 3)]
  np.testing.assert_array_equal(out, np.stack([inputs + 1.0, 2.0 * inputs]))
  np.testing.assert_array_equal(map_in_chunks(lambda x: x * 3.0, inputs, 5), inputs * 3.0)

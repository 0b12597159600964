"""Picture grids: cell placement, scaling, borders and PNG files."""

import numpy as np
from PIL import Image
import pytest

from genvis.sampling import image_grid


def test_cells_land_in_their_row_and_column_scaled_with_white_borders():
  table = np.full((2, 3, 2, 2, 1), -1.0, np.float32)
  table[1, 2] = 1.0  # only the bottom-right cell is white
  picture = image_grid.tile(table, border=1, scale=2)
  assert picture.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
  assert picture[0].min() == 255  # top border
  np.testing.assert_array_equal(picture[1:5, 1:5], 0)  # cell (0, 0), 4x4 after scaling
  np.testing.assert_array_equal(picture[6:10, 11:15], 255)  # cell (1, 2)
  np.testing.assert_array_equal(picture[6:10, 6:10], 0)  # cell (1, 1)


def test_to_uint8_maps_the_ends_and_clips():
  np.testing.assert_array_equal(image_grid.to_uint8([-1.0, 0.0, 1.0, 3.0, -7.0]),
                                [0, 128, 255, 255, 0])


def test_png_round_trip(tmp_path):
  picture = image_grid.tile(np.random.default_rng(0).uniform(-1, 1, (2, 2, 4, 4, 3)))
  path = str(tmp_path / "grid.png")
  image_grid.save_png(path, picture)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary left
  with pytest.raises(ValueError, match="uint8"):
    image_grid.save_png(path, picture.astype(np.float32))

"""Files are replaced whole or not at all."""

import os

import pytest

from genvis import atomic_files


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "sub" / "config.json")
  atomic_files.write_text(path, "old")
  with pytest.raises(RuntimeError):
    with atomic_files.replacing(path) as temporary:
      with open(temporary, "w", encoding="utf-8") as f:
        f.write("half a new fi")
      raise RuntimeError("disk full")
  assert open(path, encoding="utf-8").read() == "old"
  assert os.listdir(os.path.dirname(path)) == ["config.json"]
  atomic_files.write_text(path, "new")
  assert open(path, encoding="utf-8").read() == "new"

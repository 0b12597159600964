"""A plain folder of images (and, optionally, captions) as an image dataset.

Why: a researcher's own images (a scrape, renders, a class-per-folder download) should train
ImageGPT, MAE, CLIP or a diffusion model without writing a tfds builder. The layout rules are
few and fixed, so a folder means the same dataset on every machine:

- Images: every .png .jpg .jpeg .bmp .gif .webp file under `config.data.folder`, recursively,
  in sorted order of their paths relative to it (`/` separated); names starting with "." are
  skipped (.ipynb_checkpoints, macOS ._ files). A GIF gives its first frame; a photo's EXIF
  orientation is applied; transparency is flattened onto white.
- Splits: if the folder has a subfolder named like the split (`train/`, `test/`, or any other
  name asked for), the split is the images under it (with a `train/` or `test/` subfolder, a
  split without its subfolder is an error). Otherwise, with
  `folder_test_fraction` f > 0, an image is in "test" when a hash of its relative path falls
  below f (stable across machines, and an image keeps its split when others are added);
  with f = 0 the whole folder is "train" and "test" is an error.
- Labels (`folder_labels=True`, ImageFolder style): the first subfolder under the split
  folder (or under the folder, without split folders) is the class; class ids follow the
  sorted class names of the whole folder, so every split numbers classes alike.
- Captions: an optional `captions.jsonl` in the folder, one JSON object per line,
  {"file": "<path relative to the folder>", "caption": "<text>"}; then every image of the
  split needs a caption.
- Channels: with `channels` 0 ("as the data is") the images are grey if every image of the
  folder (all splits) is grey, else RGB, so every split has the same channels.
- Size: each image's centred square is resized to `resolution` (image_preprocess); with
  resolution 0 all images must already be one size.
"""

import hashlib
import json
import os
import posixpath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genvis.data import image_preprocess
from genvis.data.image_sources import ImageDataset
from genvis.errors import UserError, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
CAPTIONS_FILE = "captions.jsonl"
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height.


def list_images(root: str) -> list[str]:
  """The image files under `root`, as sorted '/'-separated paths relative to it."""
  found = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    relative_dir = os.path.relpath(directory, root)
    for file in files:
      if not file.startswith(".") and file.lower().endswith(IMAGE_EXTENSIONS):
        path = file if relative_dir == "." else os.path.join(relative_dir, file)
        found.append(path.replace(os.sep, "/"))
  return sorted(found)


def read_captions(path: str, image_files) -> dict[str, str]:
  """{relative file: caption} from a captions.jsonl; blank lines are skipped.

  Raises:
    UserError: naming the file and line of bad JSON, a missing or non-string key, a file that
      is not one of `image_files`, or a second caption for the same file.
  """
  image_files = set(image_files)
  captions, first_line = {}, {}
  with open(path, encoding="utf-8") as lines:
    for number, line in enumerate(lines, start=1):
      if not line.strip():
        continue
      where = f"{path}:{number}"
      try:
        entry = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
      if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
              and isinstance(entry.get("caption"), str)):
        raise UserError(f'{where}: expected {{"file": <str>, "caption": <str>}}, got '
                        f"{line.strip()[:80]}")
      file = posixpath.normpath(entry["file"].replace("\\", "/"))
      if file not in image_files:
        raise UserError(f"{where}: {entry['file']!r} is not an image file in the folder")
      if file in captions:
        raise UserError(f"{where}: {file!r} already has a caption (line {first_line[file]})")
      captions[file], first_line[file] = entry["caption"], number
  return captions


def _is_test(relative_path: str, test_fraction: float) -> bool:
  """The hash split: a uniform number in [0, 1) from the path, compared with the fraction."""
  digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def _select_split(root: str, files: list[str], split: str, test_fraction: float):
  """(files of `split`, number of leading path parts that name the split: 0 or 1)."""
  if split and split not in (".", "..") and "/" not in split and os.path.isdir(
      os.path.join(root, split)):
    return [f for f in files if f.startswith(split + "/")], 1
  if any(os.path.isdir(os.path.join(root, name)) for name in ("train", "test")):
    # Reading the whole folder would mix the other split's images into this one.
    raise UserError(f"config.data.folder={root!r} has split subfolders but no {split!r}/ "
                    f"subfolder for split {split!r}")
  if not 0 <= test_fraction < 1:
    raise UserError(f"config.data.folder_test_fraction={test_fraction}: expected a fraction "
                    "in [0, 1)")
  if test_fraction > 0:
    if split not in ("train", "test"):
      raise UserError(f"config.data.folder={root!r}: split {split!r} is neither a subfolder "
                      "nor train/test (of the hash split by folder_test_fraction)")
    return [f for f in files if _is_test(f, test_fraction) == (split == "test")], 0
  if split == "train":
    return files, 0
  raise UserError(f"config.data.folder={root!r} has no {split!r}/ subfolder; add one, or set "
                  "config.data.folder_test_fraction to split the images by file name")


def _class_names(files: list[str], depth: int) -> tuple[str, ...]:
  """Sorted class folder names: path part `depth` of every file (all splits)."""
  return tuple(sorted({f.split("/")[depth] for f in files if f.count("/") > depth}))


def _labels(root: str, files: list[str], depth: int, class_names) -> np.ndarray:
  ids = {name: i for i, name in enumerate(class_names)}
  labels = np.empty((len(files),), np.int32)
  for i, file in enumerate(files):
    parts = file.split("/")
    if len(parts) <= depth + 1:
      raise UserError(f"config.data.folder_labels=True but {os.path.join(root, file)} is not "
                      "in a class subfolder")
    labels[i] = ids[parts[depth]]
  return labels


def _open(path: str) -> Image.Image:
  try:
    return Image.open(path)
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f"cannot read image {path}: {one_line(e)}") from None


def _header(path: str) -> tuple[tuple[int, int], bool]:
  """((height, width) after EXIF orientation, whether the image is grey), from the header."""
  with _open(path) as image:
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED_ORIENTATIONS:
      width, height = height, width
    return (height, width), image_preprocess.is_grey_mode(image.mode)


def _automatic_channels(root: str, files: list[str], headers, all_files: list[str]) -> int:
  """channels=0, as the data is: 1 only if every image of the folder is grey. The whole
  folder (as for class names), so that every split has the channels of the others."""
  if not all(grey for _, grey in headers):
    return 3
  chosen = set(files)
  # Stops at the first colour image; only an all-grey split reads the other splits' headers.
  others = (f for f in all_files if f not in chosen)
  return 1 if all(_header(os.path.join(root, f))[1] for f in others) else 3


def _decode(path: str, channels: int, resolution: int) -> np.ndarray:
  """One file through the shared path: orientation, channels, centre crop and resize."""
  try:
    with _open(path) as image:
      image = ImageOps.exif_transpose(image)
      image = image_preprocess.convert_channels(image, channels)
      image = image_preprocess.resize_and_center_crop_pil(image, resolution)
      return image_preprocess.pil_to_array(image)
  except OSError as e:  # A truncated or corrupt file fails when its pixels are read.
    raise UserError(f"cannot read image {path}: {one_line(e)}") from None


def load_folder(settings: dict, split: str) -> ImageDataset:
  """One split of `settings["folder"]` (see the module docstring for the rules).

  Args:
    settings: the checked config.data values (image_sources._settings).
    split: "train", "test" or the name of a split subfolder.

  Returns:
    The split as an ImageDataset; `name` is the folder path.
  """
  root = settings["folder"]
  if not root:
    raise UserError("config.data.folder is empty: set it to a directory of images "
                    "(config.data.source='folder')")
  if not os.path.isdir(root):
    raise UserError(f"config.data.folder={root!r}: no such directory")
  all_files = list_images(root)
  if not all_files:
    raise UserError(f"config.data.folder={root!r} holds no images "
                    f"({' '.join(IMAGE_EXTENSIONS)}, searched recursively)")
  captions_path = os.path.join(root, CAPTIONS_FILE)
  captions = read_captions(captions_path, all_files) if os.path.isfile(captions_path) else None
  files, depth = _select_split(root, all_files, split, settings["folder_test_fraction"])
  files = files[:settings["max_examples"] or None]
  if not files:
    raise UserError(f"config.data.folder={root!r}: split {split!r} holds no images")
  labels, class_names = None, ()
  if settings["folder_labels"]:
    class_names = _class_names(all_files, depth)
    labels = _labels(root, files, depth, class_names)
  if captions is not None:
    missing = [f for f in files if f not in captions]
    if missing:
      raise UserError(f"{captions_path}: no caption for {len(missing)} of the {len(files)} "
                      f"images of split {split!r}, e.g. {missing[0]!r}")
    captions = [captions[f] for f in files]
  images = _read_images(root, files, settings["resolution"], settings["channels"], all_files)
  return ImageDataset(images=image_preprocess.to_unit_range(images), labels=labels,
                      captions=captions, num_classes=len(class_names),
                      class_names=class_names, name=root)


def _read_images(root: str, files: list[str], resolution: int, channels: int,
                 all_files: list[str]) -> np.ndarray:
  """uint8 [N, side, side, C] of `files`, after the header checks that need no decoding."""
  headers = [_header(os.path.join(root, f)) for f in files]
  if channels == 0:
    channels = _automatic_channels(root, files, headers, all_files)
  if resolution == 0:
    first_shape = headers[0][0]
    for file, (shape, _) in zip(files, headers):
      if shape != first_shape:
        raise UserError(
            f"config.data.resolution=0 keeps native sizes, but {os.path.join(root, file)} is "
            f"{shape[0]}x{shape[1]} (HxW) while {os.path.join(root, files[0])} is "
            f"{first_shape[0]}x{first_shape[1]}; set config.data.resolution")
    height, width = first_shape
  else:
    height = width = resolution
  images = np.empty((len(files), height, width, channels), np.uint8)
  for i, file in enumerate(files):
    images[i] = _decode(os.path.join(root, file), channels, resolution)
  return images

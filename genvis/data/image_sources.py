"""Image datasets for every image family, from one config section: `config.data.source` picks
the embedded digits, the procedural scenes, a prepared tfds dataset or a plain folder.

Why one entry point: ImageGPT, MAE, CLIP and diffusion all need "the images (and labels,
captions) of split S", and a researcher moving from digits on a laptop to CIFAR-10 or a folder
of photos should change a config key, not a task. Every source returns an `ImageDataset` in
the conventions of `genvis.data.digits`: images float32 [N, H, W, C] in [-1, 1], labels int32
[N] (or None), captions list[str] (or None). tfds images and folder images go through the same
numpy/PIL path (`genvis.data.image_preprocess`): centre square, bicubic resize to
`resolution`, channels, x / 127.5 - 1.

Memory: a split is held in host memory as float32, which keeps batching a slice of an array.
That suits the CPU-scale datasets trained here: CIFAR-10 at 32 px is 614 MB (train) + 123 MB
(test) = 737 MB; CelebA at 64 px would be 9.7 GB, so cap a large dataset with
`config.data.max_examples` (the first N examples of the split, in the stored order) or a
smaller `resolution`. Augmentation (`flip`, `random_crop_padding`) is not applied here: it is
a function of (seed, step, row), applied to each batch by `image_preprocess.augment`.

Splits: "train" and "test" everywhere; scenes also has "heldout" (held-out colour-shape
pairs); tfds maps "train"/"test" to `tfds_train_split`/`tfds_test_split` and takes any other
split expression as is; for folders see `genvis.data.image_folder`.
"""

import dataclasses

import numpy as np

from genvis.data import digit_captions
from genvis.data import digits as digits_lib
from genvis.data import image_preprocess
from genvis.data import scenes as scenes_lib
from genvis.data import source_keys
from genvis.errors import UserError

SOURCES = ("digits", "scenes", "tfds", "folder")
# Keys only one source reads (genvis/data/source_keys.py).
_TFDS = ("tfds", "a tfds data variant (data=mnist, cifar10, ...)")
SOURCE_ONLY_KEYS = {"folder": ("folder", "the data=folder variant"), "tfds_name": _TFDS,
                    "tfds_data_dir": _TFDS, "tfds_image_key": _TFDS, "tfds_label_key": _TFDS,
                    "tfds_caption_key": _TFDS}

# The scenes "test" split continues the training sequence (seed, "train") from this index, so
# it has the training distribution, never shares an image with any training set of fewer
# images, and does not move when `scenes_train` changes.
SCENES_TEST_START = 1_000_000_000
SCENES_DEFAULT_RESOLUTION = 32
SCENES_LABELS = {"shape": scenes_lib.SHAPES, "colour": scenes_lib.COLOUR_NAMES,
                 "size": scenes_lib.SIZES, "position": scenes_lib.POSITIONS}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """One split of an image dataset, in memory.

  Attributes:
    images: float32 [N, H, W, C] in [-1, 1], C = 1 (grey) or 3 (RGB).
    labels: int32 [N] class ids in 0..num_classes-1, or None when the data has none.
    captions: N strings, or None: one caption per image (for a dataset with several per
      image, the first; training picks among all of them, see genvis.data.caption_batches).
    all_captions: for datasets with several captions per image (tfds coco_captions; the
      digits, one per phrasing), every caption of each image, all_captions[i][0] ==
      captions[i]; None when there is one each.
      Retrieval evaluation needs them all (an image query hits if ANY caption is retrieved).
    num_classes: the number of classes; 0 when unknown or unlabelled.
    class_names: the class names in id order (for CLIP prompts, reports); () when unknown.
    name: where it came from, for logs ("digits", "cifar10", "/data/photos").
  """

  images: np.ndarray
  labels: np.ndarray | None = None
  captions: list[str] | None = None
  all_captions: list[list[str]] | None = None
  num_classes: int = 0
  class_names: tuple[str, ...] = ()
  name: str = ""

  def __post_init__(self):
    count = len(self.images)
    if self.images.ndim != 4 or self.images.dtype != np.float32:
      raise ValueError(f"ImageDataset.images must be float32 [N, H, W, C], got "
                       f"{self.images.dtype} {list(self.images.shape)}")
    if self.labels is not None and (self.labels.shape != (count,)
                                    or self.labels.dtype != np.int32):
      raise ValueError(f"ImageDataset.labels must be int32 [{count}], got "
                       f"{self.labels.dtype} {list(self.labels.shape)}")
    if self.captions is not None and len(self.captions) != count:
      raise ValueError(f"ImageDataset has {count} images but {len(self.captions)} captions")
    if self.all_captions is not None and (
        self.captions is None or len(self.all_captions) != count
        or any(not group or group[0] != first
               for group, first in zip(self.all_captions, self.captions))):
      raise ValueError("ImageDataset.all_captions must hold one non-empty list per image "
                       "whose first entry is that image's caption")

  def __len__(self) -> int:
    return len(self.images)

  def caption_lists(self) -> list[list[str]] | None:
    """Every caption of each image (one each unless `all_captions`), or None."""
    if self.all_captions is not None:
      return self.all_captions
    return None if self.captions is None else [[caption] for caption in self.captions]


def image_data_defaults() -> dict:
  """The `config.data` keys every image config starts from, with their defaults.

  A config does `c.data = image_data_defaults(); c.data.update(source="tfds", ...)` and adds
  its own keys (batch size, palette). Values are plain str/int/float/bool, so the config
  locks and every key can be set from the command line.
  """
  return dict(
      source="digits",  # digits | scenes | tfds | folder
      resolution=0,  # output side in pixels; 0: native (digits 8, scenes 32, tfds/folder as
                     # stored, which must then be one size)
      channels=0,  # 0: as the data is (grey 1, colour 3); 1: grey; 3: RGB
      max_examples=0,  # keep the first N examples of a split; 0: all
      dataset_seed=0,  # the digits split and the scenes sequence; not config.seed
      # scenes (genvis.data.scenes): counts per split, and which attribute of the first object
      # (the one the caption names first) is the label: shape | colour | size | position | none
      scenes_train=5000,
      scenes_test=500,
      scenes_heldout=500,
      scenes_max_objects=3,
      scenes_label="shape",
      # tfds: a prepared dataset (never downloaded), e.g. mnist, fashion_mnist, cifar10,
      # celeb_a, imagenet2012 (built with `tfds build imagenet2012 --manual_dir=...`)
      tfds_name="",
      tfds_data_dir="",  # "": tfds' default (TFDS_DATA_DIR or ~/tensorflow_datasets)
      tfds_train_split="train",  # what split "train" reads (a tfds split expression)
      tfds_test_split="test",  # what split "test" reads (celeb_a, imagenet2012: "validation")
      tfds_image_key="",  # "": "image", or the dataset's only Image feature
      tfds_label_key="",  # "": "label" if it is a ClassLabel, else no labels; "none": none
      tfds_caption_key="",  # "": no captions; else a string feature, "/" for nesting
                            # (coco_captions: "captions/text", ~5 per image)
      # folder: images (.png .jpg .jpeg .bmp .gif .webp) found recursively; see image_folder
      folder="",
      folder_labels=False,  # the first subfolder (under a split folder) names the class
      folder_test_fraction=0.0,  # without train/ test/ subfolders: this fraction is "test"
      # train-time augmentation, applied per batch by image_preprocess.augment
      flip=False,
      random_crop_padding=0,
  )


# Short dataset names for config variants ("data=scenes"): the changes each makes to
# image_data_defaults(). Sizes are CPU-friendly; tfds data must be prepared beforehand.
NAMED_DATA = {
    "digits": dict(source="digits"),
    "scenes": dict(source="scenes", resolution=16),
    "mnist": dict(source="tfds", tfds_name="mnist"),
    "fashion_mnist": dict(source="tfds", tfds_name="fashion_mnist"),
    "cifar10": dict(source="tfds", tfds_name="cifar10", resolution=32),
    "celeb_a": dict(source="tfds", tfds_name="celeb_a", resolution=32,
                    tfds_test_split="validation"),
    "imagenet": dict(source="tfds", tfds_name="imagenet2012", resolution=32,
                     tfds_test_split="validation"),
    "folder": dict(source="folder", resolution=32),
    # Karpathy splits: train 82,783 images (1.0 GB at 32 px), val / test 5,000, restval 30,504.
    "coco_captions": dict(source="tfds", tfds_name="coco_captions", resolution=32,
                          tfds_caption_key="captions/text"),
}


def named_data(name: str) -> dict:
  """image_data_defaults() with the changes of NAMED_DATA[name]."""
  if name not in NAMED_DATA:
    raise ValueError(f"config variant data={name!r}: expected one of {', '.join(NAMED_DATA)}")
  return {**image_data_defaults(), **NAMED_DATA[name]}


def load_image_dataset(data_config, split: str) -> ImageDataset:
  """One split of the dataset that `data_config` (config.data) names.

  Args:
    data_config: a ConfigDict or mapping with the keys of `image_data_defaults` (missing
      keys take their defaults; other keys are ignored).
    split: "train", "test", or a source-specific split (scenes "heldout", a tfds split
      expression, a folder's subfolder name).

  Returns:
    The split as an `ImageDataset`.

  Raises:
    UserError: one line naming the config key, file or shape that is wrong.
  """
  settings = _settings(data_config)
  source = settings["source"]
  if source == "digits":
    dataset = _load_digits(settings, split)
  elif source == "scenes":
    dataset = _load_scenes(settings, split)
  elif source == "tfds":
    from genvis.data import tfds_images  # pylint: disable=import-outside-toplevel
    dataset = tfds_images.load_tfds_images(settings, split)
  elif source == "folder":
    from genvis.data import image_folder  # pylint: disable=import-outside-toplevel
    dataset = image_folder.load_folder(settings, split)
  else:
    raise UserError(f"config.data.source={source!r}: expected digits, scenes, tfds or folder")
  if len(dataset) == 0:
    raise UserError(f"{dataset.name} split {split!r} has no images "
                    f"(config.data.source={source!r})")
  return dataset


def load_train_test(data_config) -> tuple[ImageDataset, ImageDataset]:
  """The "train" and "test" splits, checked to hold images of one shape (what a model built
  for the training images needs of the held-out ones)."""
  train, test = (load_image_dataset(data_config, split) for split in ("train", "test"))
  if test.images.shape[1:] != train.images.shape[1:]:
    raise UserError(f"config.data: test images are {list(test.images.shape[1:])}, training "
                    f"images {list(train.images.shape[1:])}")
  return train, test


def _settings(data_config) -> dict:
  """`data_config` over the defaults, with every value's type and range checked."""
  provided = data_config.to_dict() if hasattr(data_config, "to_dict") else dict(data_config)
  defaults = image_data_defaults()
  settings = {**defaults, **{k: v for k, v in provided.items() if k in defaults}}
  for key, default in defaults.items():
    value = settings[key]
    if isinstance(default, bool):
      ok = isinstance(value, (bool, np.bool_))
    elif isinstance(default, int):
      ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0
    elif isinstance(default, float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = isinstance(value, str)
    if not ok:
      kind = {bool: "a bool", int: "a non-negative int", float: "a number",
              str: "a string"}[type(default)]
      raise UserError(f"config.data.{key}={value!r}: expected {kind}")
  source_keys.check(settings, SOURCE_ONLY_KEYS)
  if settings["channels"] not in image_preprocess.CHANNEL_CHOICES:
    raise UserError(f"config.data.channels={settings['channels']!r}: expected 0 (as the data "
                    "is), 1 (grey) or 3 (RGB)")
  return settings


def _head(count: int, settings: dict) -> int:
  """How many of `count` examples to keep under `max_examples`."""
  cap = settings["max_examples"]
  return min(count, cap) if cap else count


def _load_digits(settings: dict, split: str) -> ImageDataset:
  if split not in digits_lib.SPLITS:
    raise UserError(f"split {split!r} of config.data.source='digits': expected one of "
                    f"{', '.join(digits_lib.SPLITS)}")
  images, labels = digits_lib.load_digits(split, size=settings["resolution"] or None,
                                          seed=settings["dataset_seed"])
  keep = _head(len(images), settings)
  images = image_preprocess.set_channels(images[:keep], settings["channels"])
  captions = digit_captions.all_digit_captions(labels[:keep], settings["dataset_seed"])
  return ImageDataset(images=images, labels=labels[:keep],
                      captions=[group[0] for group in captions], all_captions=captions,
                      num_classes=digits_lib.NUM_CLASSES,
                      class_names=tuple(str(d) for d in range(digits_lib.NUM_CLASSES)),
                      name="digits")


def _scenes_split(settings: dict, split: str) -> tuple[int, int, str]:
  """(count after max_examples, index of the first scene, scenes sequence) of a scenes split:
  where its images lie in the `(dataset_seed, sequence)` sequences of genvis.data.scenes."""
  counts = {"train": settings["scenes_train"], "test": settings["scenes_test"],
            "heldout": settings["scenes_heldout"]}
  if split not in counts:
    raise UserError(f"split {split!r} of config.data.source='scenes': expected train, test "
                    "or heldout")
  if settings["scenes_train"] > SCENES_TEST_START:
    raise UserError(f"config.data.scenes_train={settings['scenes_train']} would overlap the "
                    f"test images, which start at index {SCENES_TEST_START}")
  if not 1 <= settings["scenes_max_objects"] <= scenes_lib.MAX_OBJECTS:
    raise UserError(f"config.data.scenes_max_objects={settings['scenes_max_objects']}: "
                    f"expected 1..{scenes_lib.MAX_OBJECTS}")
  return (_head(counts[split], settings), SCENES_TEST_START if split == "test" else 0,
          "heldout" if split == "heldout" else "train")


def scenes_attribute_labels(data_config, split: str) -> dict[str, np.ndarray]:
  """Every attribute label of every object in the scenes `load_image_dataset(data_config,
  split)` returns (its `labels` hold one attribute of the first object only), without
  rendering: the scenes are re-drawn at the same indices, so row i describes image i.

  Returns:
    scenes.make_scenes' "labels": "shape", "colour", "size", "position" int32
    [N, scenes_max_objects] (-1 past a scene's last object) and "num_objects" int32 [N].

  Raises:
    UserError: config.data.source is not "scenes", the split is unknown or has no images.
  """
  settings = _settings(data_config)
  if settings["source"] != "scenes":
    raise UserError(f"config.data.source={settings['source']!r}: scenes attribute labels need "
                    "source 'scenes'")
  num, start, sequence = _scenes_split(settings, split)
  if num == 0:
    raise UserError(f"scenes split {split!r} has no images (config.data.scenes_{split}=0)")
  seed, max_objects = settings["dataset_seed"], settings["scenes_max_objects"]
  per_image = [scenes_lib.scene_labels(scenes_lib.scene_at(seed, start + i, sequence,
                                                           max_objects), max_objects)
               for i in range(num)]
  return {name: np.stack([labels[name] for labels in per_image])
          for name in (*SCENES_LABELS, "num_objects")}


def _load_scenes(settings: dict, split: str) -> ImageDataset:
  num, start, sequence = _scenes_split(settings, split)
  resolution = settings["resolution"] or SCENES_DEFAULT_RESOLUTION
  if not 8 <= resolution <= 1024:
    raise UserError(f"config.data.resolution={resolution}: scenes are rendered at 8..1024 px "
                    "(0: 32)")
  label_name = settings["scenes_label"]
  if label_name not in (*SCENES_LABELS, "none"):
    raise UserError(f"config.data.scenes_label={label_name!r}: expected one of "
                    f"{', '.join(SCENES_LABELS)} or none")
  scenes = scenes_lib.make_scenes(
      num, seed=settings["dataset_seed"], split=sequence, resolution=resolution,
      max_objects=settings["scenes_max_objects"], start=start)
  images = image_preprocess.set_channels(scenes["images"], settings["channels"])
  if label_name == "none":
    return ImageDataset(images=images, captions=scenes["captions"], name="scenes")
  names = SCENES_LABELS[label_name]
  return ImageDataset(images=images, labels=scenes["labels"][label_name][:, 0].copy(),
                      captions=scenes["captions"], num_classes=len(names),
                      class_names=tuple(names), name="scenes")

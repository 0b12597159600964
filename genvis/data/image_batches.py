"""Training and held-out batches of an image dataset, for the image tasks (MAE, ViT
classification, and the tasks that follow them).

Training batches are a pure function of (seed, step): `ExampleOrder` shuffles the split per
epoch and `image_preprocess.augment` flips and crops each row from (seed, step, row), so a
resumed or multi-host run sees exactly the batches a single uninterrupted run would. Held-out
batches walk the test split in order; the last one is padded with rows of weight 0, so the
trainer's weighted average covers every test image exactly once. Each process takes only its
rows of every global batch (`process_rows`).
"""

import numpy as np

from genvis.data import image_preprocess, image_sources
from genvis.data.batching import ExampleOrder, process_rows
from genvis.errors import UserError


class ImageBatches:
  """`config.data`'s train and test splits, batched; with `labels`, each batch has them."""

  def __init__(self, data_config, seed: int, *, labels: bool = False, process_index: int = 0,
               process_count: int = 1):
    self.data_config = data_config
    self.seed = seed
    self.labels = labels
    self.train_set, self.test_set = image_sources.load_train_test(data_config)
    if labels and (self.train_set.labels is None or self.test_set.labels is None):
      raise UserError(f"config.data ({self.train_set.name or data_config.source}) has no "
                      "class labels: set a labelled source (e.g. config.data.scenes_label, "
                      "config.data.folder_labels, config.data.tfds_label_key)")
    self.image_shape = tuple(self.train_set.images.shape[1:])
    self.augmented = bool(data_config.flip or data_config.random_crop_padding)
    if self.augmented:  # a bad padding fails here, not at the first batch
      self._augment(self.train_set.images[:1], 0, np.arange(1))
    batch = data_config.batch_size
    self.rows = process_rows(batch, process_index, process_count)
    self.train_order = ExampleOrder(len(self.train_set), batch, seed, "the training split")
    self.test_order = ExampleOrder(len(self.test_set), batch, seed, "the test split")

  def _augment(self, images, step: int, row_ids) -> np.ndarray:
    return image_preprocess.augment(images, (self.seed, step), flip=self.data_config.flip,
                                    random_crop_padding=self.data_config.random_crop_padding,
                                    row_ids=row_ids)

  def train_batch(self, step: int) -> dict:
    """This process's rows of training batch `step`: images (augmented when config.data
    asks), weights of 1 (and labels)."""
    indices = self.train_order.train_indices(step)[self.rows]
    images = self.train_set.images[indices]
    if self.augmented:
      images = self._augment(images, step, np.arange(self.rows.start, self.rows.stop))
    batch = {"images": images, "weights": np.ones(len(indices), np.float32)}
    if self.labels:
      batch["labels"] = self.train_set.labels[indices]
    return batch

  def eval_batches(self, limit: int):
    """(index, batch) for the whole test split (`limit` < 0) or its first `limit` batches;
    padding rows have weight 0."""
    count = self.test_order.num_eval_batches
    for index in range(count if limit < 0 else min(limit, count)):
      indices, weights = self.test_order.eval_indices(index)
      indices, weights = indices[self.rows], weights[self.rows]
      batch = {"images": self.test_set.images[indices], "weights": weights}
      if self.labels:
        batch["labels"] = self.test_set.labels[indices]
      yield index, batch

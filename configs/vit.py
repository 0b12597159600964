"""ViT image classification, from scratch or fine-tuning a pre-trained encoder (MAE's).

  python -m genvis.main --config=configs/vit.py:data=digits --workdir=runs/vit_digits
  # fine-tune an MAE run's encoder (configs/mae.py with the same data and size):
  python -m genvis.main --config=configs/vit.py:data=digits,recipe=finetune \
      --config.init_from=runs/mae_digits --workdir=runs/vit_digits_ft

Variants (comma-separated key=value after the colon):
  data = digits (8x8, 2x2 patches), scenes (16x16, 4x4 patches; the label is the first
         object's shape, config.data.scenes_label), mnist | fashion_mnist | cifar10 |
         celeb_a | imagenet | folder (see configs/mae.py; tfds data must be prepared).
  size = cpu (the encoder of configs/mae.py's size=cpu: 4 blocks of 128, 16 patches per
         image, fixed sin-cos positions, mean-pooled patch tokens), or Ti/16, S/16, B/16,
         L/16, H/14 at 224x224 (a GPU or TPU host).
  recipe = scratch (supervised training from random weights) or finetune (MAE's end-to-end
         fine-tuning: layer-wise lr decay; --config.init_from, the pre-training run, is
         required).

The paper sizes follow MAE's appendix A: fine-tuning with batch 1024, base lr per 256 images
5e-4 (B) or 1e-3 (L, H), layer decay 0.65 (B) or 0.75 (L, H), 100 (B) or 50 (L, H) epochs
with 5 of warm-up, weight decay 0.05, label smoothing 0.1; from scratch (its "improved
recipe"): batch 4096, base lr 1e-4, weight decay 0.3, 300 (B) or 200 (L, H) epochs with 20
of warm-up. Ti and S take B's recipes. Not implemented here: drop path, mixup and cutmix,
RandAugment.
"""

from genvis import config_lib
from genvis.data.image_sources import named_data
from genvis.models import vit

PAPER_SIZES = ("Ti/16", "S/16", "B/16", "L/16", "H/14")
PAPER_RESOLUTION = 224
IMAGENET_TRAIN = 1_281_167

# size=cpu: the same encoder as configs/mae.py's size=cpu, so one fine-tunes the other.
_CPU_MODEL = dict(d_model=128, num_layers=4, num_heads=4, pos_embedding="sincos",
                  pooling="mean")
# recipe -> (config.optim changes, train.steps) at size=cpu, batch 128.
_CPU_RECIPES = {
    "scratch": (dict(lr=1e-3, layer_decay=1.0), 1500),
    "finetune": (dict(lr=1e-3, layer_decay=0.75), 600),
}
# (recipe, size) -> (batch, base lr per 256 images, weight decay, epochs, warm-up epochs,
# layer decay); MAE's appendix A.1-A.2. Ti and S (not in MAE) take B's recipe.
_PAPER_RECIPES = {
    ("scratch", "B"): (4096, 1e-4, 0.3, 300, 20, 1.0),
    ("scratch", "L"): (4096, 1e-4, 0.3, 200, 20, 1.0),
    ("finetune", "B"): (1024, 5e-4, 0.05, 100, 5, 0.65),
    ("finetune", "L"): (1024, 1e-3, 0.05, 50, 5, 0.75),
}


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"data": "digits", "size": "cpu",
                                           "recipe": "scratch"})
  c = config_lib.base_config()
  c.task = "classify"
  size, data, recipe = variant["size"], variant["data"], variant["recipe"]
  if recipe not in _CPU_RECIPES:
    raise ValueError(f"config variant recipe={recipe!r}: expected scratch or finetune")
  c.data = named_data(data)
  if size == "cpu":
    c.model = vit.config_for("B/16", **_CPU_MODEL, patch_size=2 if data == "digits" else 4)
  elif size in PAPER_SIZES:
    # MAE fine-tunes (and trains from scratch) with the mean of the patch tokens.
    c.model = vit.config_for(size, pos_embedding="sincos", pooling="mean")
  else:
    raise ValueError(f"config variant size={size!r}: expected cpu or one of "
                     f"{', '.join(PAPER_SIZES)}")
  # Filled in from the data (a set value must match it).
  c.model.update(image_size=0, channels=0, num_classes=0)
  c.classify = dict(label_smoothing=0.1)

  c.train.log_every = 100
  c.optim.update(b1=0.9, b2=0.999, weight_decay=0.05, decay="cosine", min_lr=1e-6)
  if size == "cpu":
    optim, steps = _CPU_RECIPES[recipe]
    c.data.batch_size = 128
    c.train.steps = steps
    c.optim.update(warmup_steps=steps // 20, **optim)
  else:
    family = "L" if size[0] in "LH" else "B"
    batch, base_lr, weight_decay, epochs, warmup, layer_decay = _PAPER_RECIPES[recipe, family]
    steps_per_epoch = IMAGENET_TRAIN // batch
    c.data.update(batch_size=batch, resolution=PAPER_RESOLUTION, flip=True)
    c.train.steps = epochs * steps_per_epoch
    c.optim.update(lr=base_lr * batch / 256, weight_decay=weight_decay, clip_norm=0.0,
                   warmup_steps=warmup * steps_per_epoch, layer_decay=layer_decay)
    if recipe == "scratch":
      c.optim.b2 = 0.95
  c.eval.update(every=500, num_batches=-1)  # -1: the whole test split
  c.checkpoint.every = 1000
  return c

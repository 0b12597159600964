"""MAE: masked-autoencoder pre-training of a ViT (He et al. 2021).

  python -m genvis.main --config=configs/mae.py:data=digits --workdir=runs/mae_digits

Variants (comma-separated key=value after the colon):
  data = digits (embedded, native 8x8, 2x2 patches: 16 per image; for 4x4 patches at 16x16
         add --config.data.resolution=16 --config.model.patch_size=4), scenes (procedural RGB
         scenes at 16x16, 4x4 patches: 16 per image), mnist | fashion_mnist (tfds, 28x28),
         cifar10 | celeb_a | imagenet (tfds at 32x32; imagenet2012 is built from a manual
         dir), folder (set --config.data.folder; 32x32); tfds and folder data get 4x4
         patches on CPU. tfds datasets must be prepared in --config.data.tfds_data_dir
         (nothing downloads).
  size = cpu (a 4-layer, 128-wide encoder and a 2-layer, 64-wide decoder; trains in minutes
         on a 2-core CPU), B/16, L/16, H/14 (the paper's encoders with its default 8-layer,
         512-wide decoder, at 224x224; a GPU or TPU host).

Recipe: mask 75 % of the patches; AdamW with betas (0.9, 0.95), weight decay 0.05, linear
warm-up then cosine decay, lr = base_lr * batch / 256 (the paper's scaling rule; base_lr
1.5e-4 at the paper's sizes; a CPU-sized model trained for minutes wants a larger one). The
lr is computed here from the variant's batch size: after overriding data.batch_size, scale
optim.lr by hand. The paper's norm_pix_loss (targets normalised per patch) is on at the
paper's sizes and off for size=cpu: a 2x2 digit patch has 4 values, often all background,
whose per-patch normalisation divides by ~sqrt(1e-6) and turns tiny differences into large
targets; in pixel space the loss is also directly comparable with the mean-patch baseline
and the reconstructions need no per-patch statistics.

Evaluation (every 500 steps and at the end, over the whole test split, with fixed masks)
reports val_loss (masked-patch MSE), val_mean_patch_mse (predicting the mean training patch
for every masked patch) and val_mean_image_mse (the mean training patch at that position).

Reference run (2-core CPU, shared with other jobs):
- `data=digits` (default): 1,500 steps of 128 images (0.9 M parameters, 7.5 steps/s) in
  3 min 50 s wall including compile and evals; test masked-patch MSE (val_loss) 0.198,
  against 0.566 for the mean patch and 0.295 for the mean image on the same masks (0.261 /
  0.213 at steps 500 / 1,000). Pixels are in [-1, 1].
- `data=scenes`: the same model and token counts (16 patches of 4x4x3): about the same step
  time, so ~4 minutes; not measured.
"""

from genvis import config_lib
from genvis.data.image_sources import named_data
from genvis.models import mae

PAPER_BASE_LR = 1.5e-4  # per 256 images (MAE, section A.1)
PAPER_RESOLUTION = 224
PAPER_SIZES = ("B/16", "L/16", "H/14")

# size=cpu: a small encoder and a light decoder (the decoder width/depth from config).
_CPU_MODEL = dict(d_model=128, num_layers=4, num_heads=4, decoder_d_model=64,
                  decoder_layers=2, decoder_heads=4, norm_pix_loss=False)
_CPU_BASE_LR = 2e-3  # per 256 images: lr 1e-3 at batch 128
_CPU_RECIPE = {"data.batch_size": 128, "train.steps": 1500}


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"data": "digits", "size": "cpu"})
  c = config_lib.base_config()
  c.task = "mae"
  size, data = variant["size"], variant["data"]
  c.data = named_data(data)
  c.data.batch_size = 128
  cpu_patch = 2 if data == "digits" else 4  # 16 patches per digit or scene
  if size == "cpu":
    c.model = mae.config_for("B/16", **_CPU_MODEL, patch_size=cpu_patch)
  elif size in PAPER_SIZES:
    c.model = mae.config_for(size, norm_pix_loss=True)  # decoder 512 x 8, 16 heads
  else:
    raise ValueError(f"config variant size={size!r}: expected cpu or one of "
                     f"{', '.join(PAPER_SIZES)}")
  # Filled in from the data (a set value must match it).
  c.model.update(image_size=0, channels=0, mask_ratio=0.75)
  # Pre-training never pools; the linear probes (MAETask.features) do. The mean of the patch
  # tokens is what MAE's fine-tuning (configs/vit.py) uses and what the probes of
  # experiments/results/mae were measured on.
  c.model.pooling = "mean"

  c.train.log_every = 100
  c.optim.update(b1=0.9, b2=0.95, weight_decay=0.05, decay="cosine", min_lr=0.0)
  if size == "cpu":
    for key, value in _CPU_RECIPE.items():
      section, field = key.split(".")
      c[section][field] = value
    c.optim.update(lr=_CPU_BASE_LR * c.data.batch_size / 256,
                   warmup_steps=c.train.steps // 20)
  else:  # the paper: batch 4096, 800 epochs of ImageNet with 40 of warm-up, no clipping
    c.data.update(batch_size=4096, resolution=PAPER_RESOLUTION)
    c.train.steps = 800 * 1_281_167 // 4096
    c.optim.update(lr=PAPER_BASE_LR * c.data.batch_size / 256, warmup_steps=40 * 312,
                   clip_norm=0.0)
  c.eval.update(every=500, num_batches=-1)  # -1: the whole test split
  c.checkpoint.every = 1000
  c.sample.update(every=0, num_samples=8)  # rows of the reconstruction grid
  return c

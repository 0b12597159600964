"""ImageGPT: generative pre-training on pixel tokens (Chen et al. 2020).

  python -m genvis.main --config=configs/igpt.py:data=digits --workdir=runs/igpt_digits

Variants (comma-separated key=value after the colon):
  data = digits (embedded, 8x8, its 17 native grey levels), scenes (procedural RGB scenes at
         16x16, 16-colour k-means palette), mnist | fashion_mnist (tfds, 28x28, 16 grey
         levels), cifar10 | celeb_a | imagenet (tfds at 32x32 with ImageGPT's 512-colour
         k-means palette; imagenet2012 is built from a manual dir), folder (set
         --config.data.folder; 32x32, 512 colours). tfds datasets must be prepared in
         --config.data.tfds_data_dir (nothing downloads).
  size = cpu (ImageGPT's options at 128 wide, with each embedded dataset's CPU recipe below),
         igpt-s, igpt-m, igpt-l, igpt-xl (the paper's sizes; a GPU or TPU host).

Reference runs (2-core CPU; `python experiments/bench/igpt_digits.py [--data scenes]` trains
and also reports the count baselines and linear probes):
- `data=digits` (default): 6 layers x 128, 1,500 steps of 64 images in 13 minutes; test
  bits/dim 1.84, against 2.43 for a per-pixel categorical model and 2.98 for a unigram.
- `data=scenes`: 4 layers x 128, 1,000 steps of 32 scenes (16x16, 16 colours) in 17 minutes;
  test 0.067 bits/dim (0.20 bits per pixel).
"""

from genvis import config_lib
from genvis.data.image_sources import named_data
from genvis.models import gpt

# size=cpu: ImageGPT's options at a width that trains in minutes on a 2-core CPU, with a
# recipe per embedded dataset (other data starts from the digits recipe).
_CPU_MODEL = dict(num_layers=6, d_model=128, num_heads=4, dropout=0.1)
_CPU_RECIPES = {
    # Batch 32 for 3,000 steps with dropout 0.2 reached the same 1.85 bits/dim in twice the
    # time.
    "digits": {"data.batch_size": 64, "train.steps": 1500},
    # 256 tokens per 16x16 scene: shallower, fewer steps.
    "scenes": {"data.batch_size": 32, "train.steps": 1000, "model.num_layers": 4},
}

# ImageGPT's palette per dataset, where it is not the 512-colour k-means: grey levels for the
# grey datasets (the digits' 17 native levels), 16 k-means colours for the small scenes.
_PALETTES = {
    "digits": dict(palette="grey", palette_size=17),
    "scenes": dict(palette="kmeans", palette_size=16),
    "mnist": dict(palette="grey", palette_size=16),
    "fashion_mnist": dict(palette="grey", palette_size=16),
}


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"data": "digits", "size": "cpu"})
  c = config_lib.base_config()
  c.task = "igpt"
  size = variant["size"]
  if size == "cpu":
    c.model = gpt.config_for("igpt-s", **_CPU_MODEL)
  elif size.startswith("igpt-") and size in gpt.VARIANTS:
    c.model = gpt.config_for(size)
  else:
    raise ValueError(f"config variant size={size!r}: expected cpu or one of "
                     f"{', '.join(v for v in gpt.VARIANTS if v.startswith('igpt-'))}")
  # Filled in from the data: colours + start token in, colours out, one position per pixel.
  c.model.update(vocab_size=0, output_vocab_size=0, max_len=0)

  c.data = named_data(variant["data"])
  c.data.update(
      batch_size=64,
      palette="kmeans",  # grey (evenly spaced levels) | kmeans (clusters of training pixels)
      palette_size=512,  # colours (ImageGPT: 512, 9 bits); grey: levels
      palette_fit_pixels=1_000_000,  # k-means on at most this many training pixels; 0: all
      palette_iters=20,
  )
  c.data.update(_PALETTES.get(variant["data"], {}))

  c.train.log_every = 100
  c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, b2=0.99, weight_decay=0.1)
  if size == "cpu":
    for key, value in _CPU_RECIPES.get(variant["data"], _CPU_RECIPES["digits"]).items():
      section, field = key.split(".")
      c[section][field] = value
  else:  # the paper's sizes: batch 128, lr 3e-4 after a long warm-up
    c.data.batch_size = 128
    c.train.steps = 500_000
    c.optim.update(lr=3e-4, min_lr=0.0, warmup_steps=5000, b2=0.95)
  c.eval.update(every=500, num_batches=-1)  # -1: the whole test split
  c.checkpoint.every = 1000
  c.sample.update(every=0, num_samples=8, temperature=1.0)
  c.sample.completions = 4  # completions per test image, given its top half
  return c

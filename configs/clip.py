"""CLIP / SigLIP: contrastive image–caption pre-training with zero-shot and retrieval evals.

  python -m genvis.main --config=configs/clip.py:data=scenes --workdir=runs/clip_scenes
  python -m genvis.main --config=configs/clip.py:data=scenes,loss=siglip --workdir=...

Variants (comma-separated key=value after the colon):
  data = scenes (procedural scenes of one object at 32x32, 8x8 patches, captions such as "a
         small red circle at the top left"; zero-shot on shape, colour and the held-out
         colour-shape pairs), digits (8x8 digits, 2x2 patches, captions in six phrasings such
         as "a handwritten seven" / "the digit 7"), coco_captions (tfds, prepared beforehand;
         32x32), folder (images with captions.jsonl; set --config.data.folder).
  size = cpu (two 4-block, 128-wide towers, 64-d embeddings, 16 or 32 tokens; minutes on a
         CPU),
         B/32, B/16, L/14, L/14-336 (the CLIP paper's, at their resolutions; a GPU or TPU host).
  loss = clip (softmax over the global batch, temperature from 1/0.07 clipped at 100) or
         siglip (pairwise sigmoid, t = 10 and b = -10 at init).

Recipe (the CLIP paper's at its sizes: AdamW with betas (0.9, 0.98), eps 1e-6, weight
decay 0.2, cosine decay with warm-up, batch 32,768; here batch 128 on a CPU). The caption
tokenizer is a byte-level BPE fitted on the training captions with at most
config.model.vocab_size tokens (the text model's embedding table has that many rows).
"""

from genvis import config_lib
from genvis.data import caption_tokens
from genvis.data.image_sources import named_data
from genvis.models import clip

PAPER_SIZES = ("B/32", "B/16", "L/14", "L/14-336")

# data variant -> (config.data changes over named_data(), CPU patch size, CPU caption
# tokens). Scenes' and digits' captions are at most 14 tokens with SOT and EOT. 8x8 patches
# keep a scene at 16 tokens; at 16x16 pixels its small shapes are 2-3 pixels wide.
_DATA = {
    "scenes": (dict(resolution=32, scenes_max_objects=1, scenes_train=10000,
                    scenes_test=1000, scenes_heldout=500), 8, 16),
    "digits": (dict(), 2, 16),
    "coco_captions": (dict(), 4, 32),
    "folder": (dict(), 4, 32),
}


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"data": "scenes", "size": "cpu", "loss": "clip"})
  c = config_lib.base_config()
  c.task = "clip"
  data, size, loss = variant["data"], variant["size"], variant["loss"]
  if data not in _DATA:
    raise ValueError(f"config variant data={data!r}: expected one of {', '.join(_DATA)}")
  if loss not in ("clip", "siglip"):
    raise ValueError(f"config variant loss={loss!r}: expected clip or siglip")
  data_changes, cpu_patch, cpu_tokens = _DATA[data]
  c.data = named_data(data)
  c.data.update(data_changes)

  common = dict(loss=loss, eot_token_id=caption_tokens.END_ID)
  if size == "cpu":
    c.model = clip.config_for("cpu", patch_size=cpu_patch, max_len=cpu_tokens, **common)
  elif size in PAPER_SIZES:
    c.model = clip.config_for(size, vocab_size=49408, **common)
    c.data.resolution = c.model.image_size
  else:
    raise ValueError(f"config variant size={size!r}: expected cpu or one of "
                     f"{', '.join(PAPER_SIZES)}")
  c.model.update(image_size=0, channels=0)  # from the data (a set value must match it)
  c.clip = dict(
      sharded_loss=False,  # True: shard_map, each device its rows x all gathered columns
  )

  c.train.log_every = 50
  c.optim.update(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, decay="cosine", min_lr=0.0)
  if size == "cpu":
    c.data.batch_size = 128
    c.train.steps = 2000
    c.optim.update(lr=1e-3, warmup_steps=100)
  else:  # the paper: 32 epochs of 400M pairs at batch 32,768, 2,000 warm-up steps
    c.data.batch_size = 32768
    c.train.steps = 32 * 400_000_000 // 32768
    c.optim.update(lr=5e-4, warmup_steps=2000)
  c.eval.update(every=500, num_batches=-1)  # -1: the whole test split
  c.checkpoint.every = 500
  return c

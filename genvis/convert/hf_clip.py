"""Hugging Face CLIPModel checkpoints -> genvis CLIP parameters.

OpenAI's public CLIP weights (openai/clip-vit-base-patch32, -base-patch16, -large-patch14,
-large-patch14-336) are Hugging Face CLIPModel checkpoints. `from_hf` turns one into (config
fields, params) with exactly the tree `CLIP(config).init` makes, so genvis can evaluate them
zero-shot, probe them or fine-tune them.

  genvis                               Hugging Face CLIPModel
  vision/patch_embed/kernel [ppC, D]   vision_model.embeddings.patch_embedding.weight, a Conv2d
                                       [D, C, p, p] without bias
  vision/cls_token [1, 1, D]           vision_model.embeddings.class_embedding [D]
  vision/pos_embedding [1 + N, D]      vision_model.embeddings.position_embedding.weight
  vision/encoder/ln_pre, ln_f          vision_model.pre_layrnorm (sic), post_layernorm
  text/wte/embedding, text/wpe         text_model.embeddings.{token,position}_embedding.weight
  text/ln_f                            text_model.final_layer_norm
  {vision/encoder,text}/blocks/layer_i {vision,text}_model.encoder.layers.i
    ln_1, ln_2                           layer_norm1, layer_norm2
    attn/qkv [D, 3, N, Dh]               self_attn.{q,k,v}_proj  ([N*Dh, D] each)
    attn/out [N, Dh, D]                  self_attn.out_proj
    mlp/fc, mlp/proj                     mlp.fc1, mlp.fc2
  image_projection/kernel [Dv, E]      visual_projection.weight [E, Dv]
  text_projection/kernel [Dt, E]       text_projection.weight [E, Dt]
  log_scale []                         logit_scale [] (also the log of the scale)

transformers 4.x and 5.x use the same names. Checkpoints written by transformers before 4.31
also hold the `position_ids` buffers of both towers (aranges), which are dropped.

What genvis computes differently, and why it does not matter for these weights:
  * the temperature: HF multiplies by exp(logit_scale) unclipped; genvis by
    min(exp(log_scale), 100). OpenAI's training clamped the parameter itself at log 100, so a
    released checkpoint's scale is at most 100 and the two agree.
  * EOT pooling: HF's legacy eos_token_id == 2 means argmax(token ids), imported as
    eot_token_id=-1; any other eos_token_id is pooled at its first occurrence in both
    (genvis/models/clip.py explains the one difference, rows without an EOT).
"""

import dataclasses
import math
from typing import Mapping

import flax.traverse_util
import numpy as np

from genvis.convert import hf_files
from genvis.errors import UserError
from genvis.models import clip

# Model fields an import may change: they do not alter what the weights compute.
RUNTIME_FIELDS = ("scan_layers", "remat", "dtype", "param_dtype", "dropout",
                  "attention_dropout", "attention_impl")
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh"}
ARCHITECTURE = "CLIPModel"
LEGACY_EOS_TOKEN_ID = 2  # transformers' CLIPTextModel pools at argmax(ids) for this value
# HF's CLIPTextConfig / CLIPVisionConfig defaults, for config.json files that leave keys out.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407,
                      attention_dropout=0.0)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)
_BUFFERS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_BLOCK_MODULES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "out": "self_attn.out_proj",
                  "fc": "mlp.fc1", "proj": "mlp.fc2"}
_TOWER_PREFIX = {"vision": "vision_model.", "text": "text_model."}
_VISION_NAMES = {  # genvis path below vision/ -> HF name below vision_model.
    ("patch_embed", "kernel"): "embeddings.patch_embedding.weight",
    ("cls_token",): "embeddings.class_embedding",
    ("pos_embedding",): "embeddings.position_embedding.weight",
}
_TEXT_NAMES = {  # below text/ -> below text_model.
    ("wte", "embedding"): "embeddings.token_embedding.weight",
    ("wpe",): "embeddings.position_embedding.weight",
}
_NORMS = {("vision", "ln_pre"): "pre_layrnorm", ("vision", "ln_f"): "post_layernorm",
          ("text", "ln_f"): "final_layer_norm"}
_TOP_NAMES = {("image_projection", "kernel"): "visual_projection.weight",
              ("text_projection", "kernel"): "text_projection.weight",
              ("log_scale",): "logit_scale"}


# ------------------------------------------------------------------------------ config
def _tower_config(hf_config: dict, side: str, defaults: dict) -> dict:
  """One tower's sub-config with HF's defaults filled in (old files also have *_config_dict,
  which transformers let override *_config)."""
  sub = {**(hf_config.get(f"{side}_config") or {}),
         **(hf_config.get(f"{side}_config_dict") or {})}
  return {**defaults, **{k: v for k, v in sub.items() if v is not None}}


def _shared(text: dict, vision: dict, key: str):
  """genvis's towers share block options: both sub-configs must agree on `key`."""
  if text[key] != vision[key]:
    raise UserError(f"config.json text_config.{key}={text[key]!r} but vision_config.{key}="
                    f"{vision[key]!r}: genvis CLIP shares it between the towers")
  return text[key]


def config_from_hf(hf_config, **overrides) -> dict:
  """Every CLIPConfig field for a Hugging Face CLIPConfig (dict, transformers config or
  config.json path); `overrides` may set RUNTIME_FIELDS."""
  hf_config = hf_files.config_dict(hf_config)
  if hf_config.get("model_type") != "clip":
    raise UserError(f"config.json model_type={hf_config.get('model_type')!r}: expected 'clip' "
                    f"(a {ARCHITECTURE})")
  not_runtime = sorted(set(overrides) - set(RUNTIME_FIELDS))
  if not_runtime:
    raise UserError(f"model.{not_runtime[0]} comes from config.json and cannot be overridden "
                    f"on import (allowed: {', '.join(RUNTIME_FIELDS)})")
  text = _tower_config(hf_config, "text", _TEXT_DEFAULTS)
  vision = _tower_config(hf_config, "vision", _VISION_DEFAULTS)
  activation = _shared(text, vision, "hidden_act")
  if activation not in ACTIVATIONS:
    raise UserError(f"config.json hidden_act={activation!r}: genvis imports "
                    f"{', '.join(ACTIVATIONS)}")
  eos = text["eos_token_id"]
  fields = clip.default_fields()
  fields.update(
      embed_dim=int(hf_config.get("projection_dim", 512)), loss="clip",
      image_size=_square(vision, "image_size"), patch_size=_square(vision, "patch_size"),
      channels=int(vision["num_channels"]), vision_d_model=int(vision["hidden_size"]),
      vision_layers=int(vision["num_hidden_layers"]),
      vision_heads=int(vision["num_attention_heads"]),
      vision_mlp_dim=int(vision["intermediate_size"]),
      vocab_size=int(text["vocab_size"]), max_len=int(text["max_position_embeddings"]),
      eot_token_id=(clip.ARGMAX_EOT if eos is None or eos == LEGACY_EOS_TOKEN_ID
                    else int(eos)),
      text_d_model=int(text["hidden_size"]), text_layers=int(text["num_hidden_layers"]),
      text_heads=int(text["num_attention_heads"]),
      text_mlp_dim=int(text["intermediate_size"]),
      activation=ACTIVATIONS[activation],
      layer_norm_epsilon=float(_shared(text, vision, "layer_norm_eps")), use_bias=True,
      dropout=0.0, attention_dropout=float(text["attention_dropout"]))
  # init_std stays genvis's default (width^-1/2 per tower): transformers, like OpenAI, starts
  # the blocks at width^-1/2 scales and uses initializer_range only for the embeddings.
  fields.update(overrides)
  return fields


def _square(vision: dict, key: str) -> int:
  value = vision[key]
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise UserError(f"config.json vision_config.{key}={list(value)}: genvis needs square "
                      "images and patches")
    value = value[0]
  return int(value)


# ------------------------------------------------------------------------------ tensors
def _hf_names(path: tuple) -> list[str]:
  """The HF key(s) of the genvis parameter at `path` (three for a fused qkv)."""
  if path in _TOP_NAMES:
    return [_TOP_NAMES[path]]
  tower, rest = path[0], path[1:]
  prefix = _TOWER_PREFIX[tower]
  if tower == "vision" and rest[0] == "encoder":
    rest = rest[1:]  # the ViT keeps its norms and blocks under encoder/
  named = (_VISION_NAMES if tower == "vision" else _TEXT_NAMES).get(rest)
  if named:
    return [prefix + named]
  if (tower, rest[0]) in _NORMS:
    return [f"{prefix}{_NORMS[tower, rest[0]]}.{_LEAVES[rest[1]]}"]
  layer = int(rest[1].removeprefix("layer_"))  # ("blocks", "layer_i", module..., leaf)
  *modules, leaf = rest[2:]
  block = f"{prefix}encoder.layers.{layer}."
  if modules[-1] == "qkv":
    return [f"{block}self_attn.{m}_proj.{_LEAVES[leaf]}" for m in "qkv"]
  return [f"{block}{_BLOCK_MODULES[modules[-1]]}.{_LEAVES[leaf]}"]


def _hf_shape(path: tuple, shape: tuple, config: clip.CLIPConfig) -> tuple:
  """The shape of each HF tensor behind the genvis parameter at `path`."""
  if path[-1] == "cls_token":
    return shape[-1:]
  if path[-2:] == ("patch_embed", "kernel"):
    return (shape[-1], config.channels, config.patch_size, config.patch_size)
  if path[-2:-1] == ("qkv",):  # one third each: [N*Dh, D] weights, [N*Dh] biases
    return (math.prod(shape[2:]), shape[0]) if path[-1] == "kernel" else (math.prod(shape[1:]),)
  if path[-1] != "kernel":  # embeddings, positions, norms, biases, the log-scale
    return shape
  in_dims = 2 if path[-2:] == ("out", "kernel") else 1  # [N, Dh, D] <- [D, N*Dh]
  return (math.prod(shape[in_dims:]), math.prod(shape[:in_dims]))


def import_params(state_dict: Mapping, config: clip.CLIPConfig) -> dict:
  """genvis params (numpy, config.param_dtype; the log-scale float32) with exactly the tree
  of `CLIP(config).init`, from a CLIPModel state dict (numpy arrays or torch tensors)."""
  tensors = {k: v for k, v in state_dict.items() if k not in _BUFFERS}
  sizes = (f"projection_dim={config.embed_dim}, vision {config.vision_layers}x"
           f"{config.vision_d_model} at image_size={config.image_size}, patch_size="
           f"{config.patch_size}, text {config.text_layers}x{config.text_d_model}, "
           f"vocab_size={config.vocab_size}, max_position_embeddings={config.max_len}")
  abstract = clip.abstract_params(dataclasses.replace(config, scan_layers=False))
  flat = {}
  for path, spec in flax.traverse_util.flatten_dict(abstract).items():
    hf_shape = _hf_shape(path, spec.shape, config)
    values = []
    for name in _hf_names(path):
      if name not in tensors:
        raise UserError(f"missing key {name!r} (shape {hf_shape}) in the {ARCHITECTURE} "
                        f"checkpoint ({sizes})")
      value = hf_files.to_numpy(tensors.pop(name))
      if tuple(value.shape) != hf_shape:
        raise UserError(f"key {name!r} has shape {tuple(value.shape)}, expected {hf_shape} "
                        f"from config.json ({sizes})")
      values.append(value.astype(np.float32))
    flat[path] = hf_files.vit_param_from_hf(path, values, spec.shape).astype(spec.dtype)
  hf_files.refuse_leftovers(tensors, ARCHITECTURE, sizes)
  params = flax.traverse_util.unflatten_dict(flat)
  return hf_files.stack_layers(params) if config.scan_layers else params


# ------------------------------------------------------------------------------ API
def from_hf(state_dict: Mapping, hf_config, **overrides) -> tuple[dict, dict]:
  """(CLIPConfig fields, params) from a CLIPModel state dict and its config (dict,
  transformers config, or config.json path); `overrides` may set RUNTIME_FIELDS."""
  fields = config_from_hf(hf_config, **overrides)
  return fields, import_params(state_dict, clip.CLIPConfig(**fields))


def load_hf_dir(directory: str, **overrides) -> tuple[dict, dict]:
  """(CLIPConfig fields, params) from a saved Hugging Face CLIPModel folder."""
  state_dict, hf_config = hf_files.read_dir(directory)
  return from_hf(state_dict, hf_config, **overrides)

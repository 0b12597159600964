"""Hugging Face ViTMAE and ViT checkpoints -> genvis MAE and ViT parameters.

The public MAE weights (facebook/vit-mae-base, -large, -huge) are ViTMAEForPreTraining
checkpoints; the ViT ones are ViTModel / ViTForImageClassification. `from_hf` turns either into
(config fields, params) with exactly the tree `MAE(config).init` / `ViT(config).init` makes.

transformers renamed the block tensors in 5.x, and checkpoint files on the Hub still use the
4.x names (5.x renames them while loading), so the key map is read off the state dict given:

  genvis (per block)           transformers 4.x                    transformers 5.x
  ln_1, ln_2                   layernorm_before, layernorm_after   (same)
  attn/qkv [D, 3, N, Dh]       attention.attention.{query,key,value}  attention.{q,k,v}_proj
  attn/out [N, Dh, D]          attention.output.dense              attention.o_proj
  mlp/fc, mlp/proj             intermediate.dense, output.dense    mlp.fc1, mlp.fc2
  blocks/layer_i               encoder.layer.i (decoder: decoder.decoder_layers.i, both)
                                                                   layers.i
  genvis (rest)                Hugging Face ("vit." first in ViTMAEForPreTraining and
                               ViTForImageClassification)
  patch_embed [p*p*C, D]       embeddings.patch_embeddings.projection, a Conv2d [D, C, p, p]
  cls_token, pos_embedding     embeddings.cls_token, embeddings.position_embeddings [1, 1+N, D]
  encoder/ln_f                 layernorm
  pre_logits, head             pooler.dense (ViTModel), classifier (no "vit.")
  decoder/{embed, mask_token,  decoder.{decoder_embed, mask_token, decoder_layers.i,
    blocks, ln_f, pred}          decoder_norm, decoder_pred}

Linear weights are [out, in] (genvis kernels are [in, out]) and the patch convolution becomes
a Dense kernel in genvis's (py, px, c) patch order. MAE's position tables (the encoder's and
decoder.decoder_pos_embed) are frozen copies of the fixed 2-D sin-cos table, which genvis
computes instead of storing: they are checked against it and a checkpoint whose tables differ
(a row-first layout, or the all-zero tables of a freshly built transformers 5.x model) is
refused with a UserError rather than imported into a model that would compute something else.
"""

import dataclasses
import math
from typing import Mapping

import flax.traverse_util
import numpy as np

from genvis.convert import hf_files
from genvis.errors import UserError
from genvis.models import mae, vit
from genvis.nn import partitioning as P
from genvis.nn.embeddings import sincos_2d

# Model fields an import may change: they do not alter what the weights compute.
RUNTIME_FIELDS = ("scan_layers", "remat", "dtype", "param_dtype", "dropout",
                  "attention_dropout", "attention_impl")
MAE_TRAINING_FIELDS = ("mask_ratio", "norm_pix_loss")  # pre-training choices, not weights
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "quick_gelu": "quick_gelu"}
POSITION_TOLERANCE = 1e-4
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_BLOCK_NAMES = {  # genvis module -> HF module names, by layout
    "4.x": {"q": "attention.attention.query", "k": "attention.attention.key",
            "v": "attention.attention.value", "out": "attention.output.dense",
            "fc": "intermediate.dense", "proj": "output.dense"},
    "5.x": {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
            "out": "attention.o_proj", "fc": "mlp.fc1", "proj": "mlp.fc2"},
}
_BLOCK_NAMES["4.x"].update(ln_1="layernorm_before", ln_2="layernorm_after")
_BLOCK_NAMES["5.x"].update(ln_1="layernorm_before", ln_2="layernorm_after")


@dataclasses.dataclass(frozen=True)
class _Layout:
  """How one checkpoint names things, read off its keys."""

  architecture: str  # for messages
  vit_prefix: str  # "vit." or ""
  layers_prefix: str  # "encoder.layer." (4.x) or "layers." (5.x)
  block_names: Mapping[str, str]
  qkv_bias: bool


def _layout(keys, hf_config: dict) -> _Layout:
  model_type = hf_config.get("model_type")
  if model_type not in ("vit_mae", "vit"):
    raise UserError(f"config.json model_type={model_type!r}: expected 'vit_mae' (MAE) or 'vit'")
  vit_prefix = "vit." if any(k.startswith("vit.") for k in keys) else ""
  new_layers = any(k.startswith(vit_prefix + "layers.") for k in keys)
  new_blocks = any(".attention.q_proj." in k for k in keys)
  if model_type == "vit_mae":
    architecture = ("ViTMAEForPreTraining" if any(k.startswith("decoder.") for k in keys)
                    else "ViTMAEModel")
  else:
    architecture = ("ViTForImageClassification" if "classifier.weight" in keys
                    else "ViTModel")
  return _Layout(architecture, vit_prefix, "layers." if new_layers else "encoder.layer.",
                 _BLOCK_NAMES["5.x" if new_blocks else "4.x"],
                 bool(hf_config.get("qkv_bias", True)))


# ------------------------------------------------------------------------------ config
def _square(hf_config: dict, key: str) -> int:
  value = hf_config.get(key)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise UserError(f"config.json {key}={list(value)}: genvis needs square images/patches")
    value = value[0]
  if value is None:
    raise UserError(f"config.json has no {key!r}")
  return int(value)


def model_fields(hf_config: dict, layout: _Layout, keys, **overrides) -> dict:
  """Every MAEConfig (ViTMAEForPreTraining) or ViTConfig (the others) field."""
  is_mae = layout.architecture == "ViTMAEForPreTraining"
  allowed = RUNTIME_FIELDS + (MAE_TRAINING_FIELDS if is_mae else ())
  not_runtime = sorted(set(overrides) - set(allowed))
  if not_runtime:
    raise UserError(f"model.{not_runtime[0]} comes from config.json and cannot be overridden "
                    f"on import (allowed: {', '.join(allowed)})")
  activation = hf_config.get("hidden_act", "gelu")
  if activation not in ACTIVATIONS:
    raise UserError(f"config.json hidden_act={activation!r}: genvis imports "
                    f"{', '.join(ACTIVATIONS)}")
  d_model = int(hf_config["hidden_size"])
  fields = mae.default_fields() if is_mae else vit.default_fields()
  fields.update(
      image_size=_square(hf_config, "image_size"), patch_size=_square(hf_config, "patch_size"),
      channels=int(hf_config.get("num_channels", 3)), d_model=d_model,
      num_layers=int(hf_config["num_hidden_layers"]),
      num_heads=int(hf_config["num_attention_heads"]), head_dim=0,
      mlp_dim=int(hf_config.get("intermediate_size") or 4 * d_model),
      activation=ACTIVATIONS[activation], norm="layer", norm_position="pre",
      layer_norm_epsilon=float(hf_config.get("layer_norm_eps", 1e-12)), use_bias=True,
      dropout=float(hf_config.get("hidden_dropout_prob", 0.0)),
      attention_dropout=float(hf_config.get("attention_probs_dropout_prob", 0.0)),
      init_std=float(hf_config.get("initializer_range", 0.02)),
      class_token=True, pooling="cls",
      pos_embedding="sincos" if hf_config["model_type"] == "vit_mae" else "learned",
      num_classes=0, representation_size=0)
  if is_mae:
    fields.update(
        decoder_d_model=int(hf_config["decoder_hidden_size"]),
        decoder_layers=int(hf_config["decoder_num_hidden_layers"]),
        decoder_heads=int(hf_config["decoder_num_attention_heads"]),
        decoder_mlp_dim=int(hf_config["decoder_intermediate_size"]),
        mask_ratio=float(hf_config.get("mask_ratio", 0.75)),
        norm_pix_loss=bool(hf_config.get("norm_pix_loss", False)), encoder_mask_tokens=False)
  if layout.vit_prefix + "pooler.dense.weight" in keys:
    if hf_config.get("pooler_act", "tanh") != "tanh":
      raise UserError(f"config.json pooler_act={hf_config['pooler_act']!r}: genvis's "
                      "pre-logits layer is Dense + tanh")
    fields["representation_size"] = int(hf_config.get("pooler_output_size") or d_model)
  if "classifier.weight" in keys:
    fields["num_classes"] = len(hf_config.get("id2label") or {}) or int(
        hf_config.get("num_labels", 2))
  fields.update(overrides)
  return fields


# ------------------------------------------------------------------------------ tensors
def _hf_names(path: tuple, layout: _Layout) -> list[str]:
  """The HF key(s) holding the genvis parameter at `path` (three for a fused qkv)."""
  if path[0] == "vit":
    return [layout.vit_prefix + name for name in _vit_names(path[1:], layout)]
  if path[0] == "decoder":
    if path[1] == "mask_token":
      return ["decoder.mask_token"]
    if path[1] == "blocks":
      return [f"decoder.decoder_layers.{_layer(path[2])}.{name}"
              for name in _block_names(path[3:], layout)]
    module = {"embed": "decoder_embed", "ln_f": "decoder_norm", "pred": "decoder_pred"}
    return [f"decoder.{module[path[1]]}.{_LEAVES[path[2]]}"]
  if path[0] == "head":
    return [f"classifier.{_LEAVES[path[1]]}"]
  return [layout.vit_prefix + name for name in _vit_names(path, layout)]


def _vit_names(path: tuple, layout: _Layout) -> list[str]:
  if path == ("cls_token",):
    return ["embeddings.cls_token"]
  if path == ("pos_embedding",):
    return ["embeddings.position_embeddings"]
  if path[0] == "patch_embed":
    return [f"embeddings.patch_embeddings.projection.{_LEAVES[path[1]]}"]
  if path[0] == "pre_logits":
    return [f"pooler.dense.{_LEAVES[path[1]]}"]
  if path[:2] == ("encoder", "ln_f"):
    return [f"layernorm.{_LEAVES[path[2]]}"]
  return [f"{layout.layers_prefix}{_layer(path[2])}.{name}"
          for name in _block_names(path[3:], layout)]


def _layer(name: str) -> int:
  return int(name.removeprefix("layer_"))


def _block_names(path: tuple, layout: _Layout) -> list[str]:
  """("attn", "qkv", "kernel") -> its q, k, v weights; ("mlp", "fc", "bias") -> one name."""
  *modules, leaf = path
  if modules[-1] == "qkv":
    return [f"{layout.block_names[m]}.{_LEAVES[leaf]}" for m in "qkv"]
  return [f"{layout.block_names[modules[-1]]}.{_LEAVES[leaf]}"]


def _hf_shape(path: tuple, shape: tuple, config: vit.ViTConfig) -> tuple:
  """The shape of each HF tensor behind the genvis parameter at `path`."""
  if path[-1] in ("cls_token", "mask_token"):
    return shape
  if path[-1] == "pos_embedding":
    return (1, *shape)
  if path[-2:] == ("patch_embed", "kernel"):
    return (shape[-1], config.channels, config.patch_size, config.patch_size)
  if path[-2:-1] == ("qkv",):  # one third each: [N*Dh, D] weights, [N*Dh] biases
    return (math.prod(shape[2:]), shape[0]) if path[-1] == "kernel" else (math.prod(shape[1:]),)
  if path[-1] in ("bias", "scale"):
    return (math.prod(shape),)
  in_dims = 2 if path[-2:] == ("out", "kernel") else 1  # [N, Dh, D] <- [D, N*Dh]
  return (math.prod(shape[in_dims:]), math.prod(shape[:in_dims]))


def _check_positions(tensors: dict, name: str, table: np.ndarray, layout: _Layout):
  """Pops a frozen sin-cos table and checks it is the one genvis computes."""
  if name not in tensors:
    return  # a checkpoint without the frozen copy: genvis computes it anyway
  value = hf_files.to_numpy(tensors.pop(name)).astype(np.float32)
  if value.shape != (1, *table.shape):
    raise UserError(f"key {name!r} has shape {tuple(value.shape)}, expected "
                    f"{(1, *table.shape)} from config.json")
  diff = float(np.abs(value[0] - table).max())
  if diff > POSITION_TOLERANCE:
    half = table.shape[1] // 2
    swapped = np.concatenate([table[:, half:], table[:, :half]], axis=1)
    why = (" (it has the row half first; MAE's layout puts the column first)"
           if np.abs(value[0] - swapped).max() <= POSITION_TOLERANCE else
           " (all zeros: a freshly built transformers model leaves it unset)"
           if not value.any() else "")
    raise UserError(f"key {name!r} is not MAE's fixed 2-D sin-cos table{why}: max difference "
                    f"{diff:.3g}; the {layout.architecture} weights would compute something "
                    "else in genvis")


def params_from_hf(state_dict: Mapping, config, layout: _Layout) -> dict:
  """genvis params (numpy, config.param_dtype) with exactly the model's `init` tree."""
  tensors = dict(state_dict)
  looped = dataclasses.replace(config, scan_layers=False)
  is_mae = isinstance(config, mae.MAEConfig)
  abstract = (mae.abstract_params if is_mae else vit.abstract_params)(looped)
  sizes = (f"hidden_size={config.d_model}, num_hidden_layers={config.num_layers}, "
           f"image_size={config.image_size}, patch_size={config.patch_size}")
  if config.pos_embedding == "sincos":
    _check_positions(tensors, layout.vit_prefix + "embeddings.position_embeddings",
                     sincos_2d(config.grid, config.grid, config.d_model, cls_token=True),
                     layout)
  if is_mae:
    _check_positions(tensors, "decoder.decoder_pos_embed",
                     sincos_2d(config.grid, config.grid, config.decoder_d_model,
                               cls_token=True), layout)
  dtype, flat = P.dtype(config.param_dtype), {}
  for path, spec in flax.traverse_util.flatten_dict(abstract).items():
    hf_shape = _hf_shape(path, spec.shape, config)
    if path[-2:] == ("qkv", "bias") and not layout.qkv_bias:  # HF's qkv_bias=False
      flat[path] = np.zeros(spec.shape, dtype)
      continue
    values = []
    for name in _hf_names(path, layout):
      if name not in tensors:
        raise UserError(f"missing key {name!r} (shape {hf_shape}) in the "
                        f"{layout.architecture} checkpoint ({sizes})")
      value = hf_files.to_numpy(tensors.pop(name))
      if tuple(value.shape) != hf_shape:
        raise UserError(f"key {name!r} has shape {tuple(value.shape)}, expected {hf_shape} "
                        f"from config.json ({sizes})")
      values.append(value.astype(np.float32))
    flat[path] = hf_files.vit_param_from_hf(path, values, spec.shape).astype(dtype)
  hf_files.refuse_leftovers(tensors, layout.architecture, sizes)
  params = flax.traverse_util.unflatten_dict(flat)
  return hf_files.stack_layers(params) if config.scan_layers else params


# ------------------------------------------------------------------------------ API
def from_hf(state_dict: Mapping, hf_config, **overrides) -> tuple[dict, dict]:
  """(config fields, params) from a HF state dict (numpy arrays or torch tensors) and its
  config (dict, transformers config, or config.json path).

  ViTMAEForPreTraining gives MAEConfig fields and MAE params; ViTModel, ViTMAEModel and
  ViTForImageClassification give ViTConfig fields and ViT params. `overrides` may set
  RUNTIME_FIELDS (and, for MAE, mask_ratio and norm_pix_loss)."""
  hf_config = hf_files.config_dict(hf_config)
  layout = _layout(list(state_dict), hf_config)
  fields = model_fields(hf_config, layout, set(state_dict), **overrides)
  is_mae = layout.architecture == "ViTMAEForPreTraining"
  config = (mae.MAEConfig if is_mae else vit.ViTConfig)(**fields)
  return fields, params_from_hf(state_dict, config, layout)


def load_hf_dir(directory: str, **overrides) -> tuple[dict, dict]:
  """(config fields, params) from a saved Hugging Face ViTMAE / ViT folder."""
  state_dict, hf_config = hf_files.read_dir(directory)
  return from_hf(state_dict, hf_config, **overrides)

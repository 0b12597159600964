"""Hugging Face GPT-2, GPT-1 and ImageGPT checkpoints <-> genvis GPT parameters.

The published GPT-2, GPT-1 and ImageGPT weights live in Hugging Face layouts
(`GPT2LMHeadModel`, `OpenAIGPTLMHeadModel`, `ImageGPTForCausalImageModeling`). Importing them
lets genvis sample, evaluate and fine-tune the public models; exporting lets a genvis run be
checked against, or used by, the transformers library.

The layouts differ from genvis's by names only (GPT-1's name in brackets where it differs):

  genvis                                  Hugging Face (with or without "transformer.")
  wte/embedding [V, D]                    wte.weight (tokens_embed.weight)
  wpe [max_len, D]                        wpe.weight (positions_embed.weight)
  blocks/layer_i/ln_1, ln_2 {scale,bias}  h.i.ln_1, h.i.ln_2 {weight,bias}
  blocks/layer_i/attn/qkv [D, 3, N, Dh]   h.i.attn.c_attn [D, 3·N·Dh]
  blocks/layer_i/attn/out [N, Dh, D]      h.i.attn.c_proj [N·Dh, D]
  blocks/layer_i/mlp/fc, proj             h.i.mlp.c_fc, h.i.mlp.c_proj
  ln_f {scale,bias}                       ln_f {weight,bias} (GPT-1: none, it is post-LN)
  head/kernel [D, V] (untied only)        lm_head.weight [V, D] (tied: HF reuses wte)

ImageGPT is GPT-2's layout with gain-only norms (`weight`, no `bias`) and an untied head with
one output fewer than its inputs (the start-of-image token is never predicted).

HF's Conv1D stores a weight as [in, out], the order of genvis kernels, and splits the fused
QKV output as (q | k | v) x heads x head_dim, so every tensor converts by a reshape alone
(the untied head by a transpose): import and export are exact inverses.

Import a local GPT-2 / GPT-1 directory into a genvis workdir (config.json + a step-0
checkpoint; ImageGPT weights load through `load_hf_dir` / `from_hf`):

  python -m genvis.convert.hf_gpt --hf_dir=gpt2 --workdir=runs/gpt2 [--family=gpt2|gpt1]

The directory holds config.json and model.safetensors (or pytorch_model.bin). The token ids
mean nothing without the checkpoint's own tokenizer: put its `tokenizer.json` (what
transformers' fast tokenizers write with `save_pretrained`) in the directory, or pass
--tokenizer=PATH; it becomes the workdir's tokenizer. --tokenizer=config keeps the tokenizer
config.data asks for instead (ids will not match the weights; for experiments only).
"""

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Mapping

import flax.traverse_util
import jax
import numpy as np

from genvis import config_lib
from genvis.convert import hf_files
from genvis.errors import UserError
from genvis.models import gpt
from genvis.nn import partitioning as P

# Model fields an import may change: they do not alter what the weights compute.
RUNTIME_FIELDS = ("scan_layers", "remat", "dtype", "param_dtype", "dropout",
                  "attention_dropout", "attention_impl")


@dataclasses.dataclass(frozen=True)
class Family:
  """What distinguishes one Hugging Face GPT layout from the other."""

  name: str  # genvis's name: "gpt2" | "gpt1"
  model_type: str  # config.json's model_type
  architecture: str  # the transformers class
  token_embedding: str
  position_embedding: str
  norm_position: str
  final_norm: bool
  activation_key: str  # config.json's key for the MLP non-linearity
  default_activation: str
  activations: Mapping[str, str]  # HF activation name -> genvis activation
  export_activations: Mapping[str, str]  # genvis activation -> HF activation name
  mlp_dim_key: str | None  # config.json's key for the MLP width, if it has one
  input_only_tokens: int = 0  # ids at the end of the vocabulary the head does not predict
  # genvis model fields the layout implies (beyond GPT-2's defaults).
  implied_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Options genvis does not implement, with the only value it can import.
  required: Mapping[str, Any] = dataclasses.field(default_factory=dict)


FAMILIES = {
    "gpt2": Family(
        name="gpt2", model_type="gpt2", architecture="GPT2LMHeadModel",
        token_embedding="wte", position_embedding="wpe", norm_position="pre", final_norm=True,
        activation_key="activation_function", default_activation="gelu_new",
        activations={"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                     "gelu": "gelu"},
        export_activations={"gelu_tanh": "gelu_new", "gelu": "gelu"},
        mlp_dim_key="n_inner",
        required={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "add_cross_attention": False}),
    # transformers' OpenAIGPT maps afn="gelu" to `gelu_new`, the tanh approximation GPT-1 was
    # trained with; it has no exact-GELU option, and its MLP is always 4 x n_embd wide.
    "gpt1": Family(
        name="gpt1", model_type="openai-gpt", architecture="OpenAIGPTLMHeadModel",
        token_embedding="tokens_embed", position_embedding="positions_embed",
        norm_position="post", final_norm=False, activation_key="afn", default_activation="gelu",
        activations={"gelu": "gelu_tanh"}, export_activations={"gelu_tanh": "gelu"},
        mlp_dim_key=None, implied_fields={"scale_residual_init": False}),
    "imagegpt": Family(
        name="imagegpt", model_type="imagegpt", architecture="ImageGPTForCausalImageModeling",
        token_embedding="wte", position_embedding="wpe", norm_position="pre", final_norm=True,
        activation_key="activation_function", default_activation="quick_gelu",
        activations={"quick_gelu": "quick_gelu"}, export_activations={"quick_gelu":
                                                                       "quick_gelu"},
        mlp_dim_key="n_inner", input_only_tokens=1,
        implied_fields={"norm": "rms", "zero_init_head": True},
        required={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "add_cross_attention": False, "tie_word_embeddings": False}),
}

# genvis module and leaf names -> Hugging Face's (names not listed are the same).
_MODULES = {"qkv": "c_attn", "out": "c_proj", "fc": "c_fc", "proj": "c_proj"}
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_HEAD = ("head", "kernel")


# ------------------------------------------------------------------------------ config
def family_of(hf_config: Mapping, family: str | None = None) -> Family:
  """The layout config.json's model_type names; `family` must agree when both are given."""
  by_type = {f.model_type: f for f in FAMILIES.values()}
  model_type = hf_config.get("model_type")
  if family is not None and family not in FAMILIES:
    raise UserError(f"family={family!r}: expected one of {', '.join(FAMILIES)}")
  if model_type is not None and model_type not in by_type:
    raise UserError(f"config.json model_type={model_type!r}: expected one of "
                    f"{', '.join(by_type)} (GPT-2, GPT-1 or ImageGPT)")
  if family is not None and model_type is not None and by_type[model_type].name != family:
    raise UserError(f"family={family!r} but config.json has model_type={model_type!r}")
  if family is None and model_type is None:
    raise UserError("config.json has no model_type: pass family='gpt2', 'gpt1' or 'imagegpt'")
  return FAMILIES[family] if family is not None else by_type[model_type]


def model_fields(hf_config: Mapping, family: Family, **overrides) -> dict:
  """Every GPTConfig field for a Hugging Face config; `overrides` may set RUNTIME_FIELDS."""
  def required(key):
    if key not in hf_config:
      raise UserError(f"config.json has no {key!r} (a {family.architecture} config needs it)")
    return hf_config[key]

  for key, supported in family.required.items():
    if hf_config.get(key, supported) != supported:
      raise UserError(f"config.json {key}={hf_config[key]!r} is not supported by genvis GPT "
                      f"(only {supported!r})")
  hf_activation = hf_config.get(family.activation_key, family.default_activation)
  if hf_activation not in family.activations:
    raise UserError(f"config.json {family.activation_key}={hf_activation!r}: genvis imports "
                    f"{', '.join(family.activations)}")
  d_model, num_heads = int(required("n_embd")), int(required("n_head"))
  if d_model % num_heads:
    raise UserError(f"config.json n_embd={d_model} is not divisible by n_head={num_heads}")
  not_runtime = sorted(set(overrides) - set(RUNTIME_FIELDS))
  if not_runtime:
    raise UserError(f"model.{not_runtime[0]} comes from config.json and cannot be overridden "
                    f"on import (allowed: {', '.join(RUNTIME_FIELDS)})")
  fields = gpt.default_fields()
  vocab_size = int(required("vocab_size"))
  fields.update(
      vocab_size=vocab_size,
      output_vocab_size=vocab_size - family.input_only_tokens if family.input_only_tokens else 0,
      max_len=int(required("n_positions")),
      num_layers=int(required("n_layer")),
      d_model=d_model,
      num_heads=num_heads,
      head_dim=0,
      mlp_dim=int(hf_config.get(family.mlp_dim_key) or 0) if family.mlp_dim_key else 0,
      activation=family.activations[hf_activation],
      norm_position=family.norm_position,
      final_norm=family.final_norm,
      tie_embeddings=bool(hf_config.get("tie_word_embeddings",
                                        family.required.get("tie_word_embeddings", True))),
      layer_norm_epsilon=float(hf_config.get("layer_norm_epsilon", 1e-5)),
      use_bias=True,
      causal=True,
      dropout=float(hf_config.get("resid_pdrop", 0.1)),
      attention_dropout=float(hf_config.get("attn_pdrop", 0.1)),
      init_std=float(hf_config.get("initializer_range", 0.02)),
      **family.implied_fields,
  )
  fields.update(overrides)
  return fields


def to_hf_config(config: gpt.GPTConfig, family: Family) -> dict:
  """The config.json of `config` in `family`'s layout; a UserError if HF cannot express it."""
  def refuse(what):
    raise UserError(f"cannot export to {family.architecture}: {what}")

  if config.num_heads * config.attention_head_dim != config.d_model:
    refuse(f"model.num_heads={config.num_heads} x head_dim={config.attention_head_dim} != "
           f"d_model={config.d_model} (HF splits d_model evenly across heads)")
  if not config.causal:
    refuse("model.causal=False")
  if set(config.layer_kinds()) != {"dense"}:
    refuse(f"model.attention_pattern={config.attention_pattern!r} (HF attention is dense)")
  if (config.norm_position, config.final_norm) != (family.norm_position, family.final_norm):
    refuse(f"model.norm_position={config.norm_position!r}, final_norm={config.final_norm} "
           f"(it needs {family.norm_position!r}, {family.final_norm})")
  norm = family.implied_fields.get("norm", "layer")
  if config.norm != norm:
    refuse(f"model.norm={config.norm!r} (it needs {norm!r})")
  if config.num_outputs != config.vocab_size - family.input_only_tokens:
    refuse(f"model.output_vocab_size={config.output_vocab_size} (its head predicts vocab_size "
           f"- {family.input_only_tokens} = {config.vocab_size - family.input_only_tokens})")
  if family.input_only_tokens and config.tie_embeddings:
    refuse("model.tie_embeddings=True (its head is untied)")
  if family.mlp_dim_key is None and config.hidden_dim != 4 * config.d_model:
    refuse(f"model.mlp_dim={config.mlp_dim} (its MLP is 4 x d_model wide)")
  if config.activation not in family.export_activations:
    refuse(f"model.activation={config.activation!r} (it has "
           f"{', '.join(family.export_activations)})")
  hf_config = {
      "architectures": [family.architecture],
      "model_type": family.model_type,
      "vocab_size": config.vocab_size,
      "n_positions": config.max_len,
      "n_embd": config.d_model,
      "n_layer": config.num_layers,
      "n_head": config.num_heads,
      family.activation_key: family.export_activations[config.activation],
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "resid_pdrop": config.dropout,
      "embd_pdrop": config.dropout,
      "attn_pdrop": config.attention_dropout,
      "initializer_range": config.init_std,
      "tie_word_embeddings": config.tie_embeddings,
      # GPT2Config defaults these to GPT-2's <|endoftext|> (50256), which a smaller vocabulary
      # lacks; callers that know their special tokens pass them as overrides.
      "bos_token_id": None,
      "eos_token_id": None,
  }
  if family.mlp_dim_key:
    hidden = config.hidden_dim
    hf_config[family.mlp_dim_key] = None if hidden == 4 * config.d_model else hidden
  return hf_config


# ------------------------------------------------------------------------------ tensors
def _hf_name(path: tuple, family: Family) -> str:
  """The Hugging Face name (without "transformer.") of the genvis parameter at `path`."""
  if path == ("wte", "embedding"):
    return f"{family.token_embedding}.weight"
  if path == ("wpe",):
    return f"{family.position_embedding}.weight"
  if path == _HEAD:
    return "lm_head.weight"
  *modules, leaf = path
  prefix = ""
  if modules[0] == "blocks":  # ("blocks", "layer_3", "attn", "qkv", "kernel")
    prefix = f"h.{int(modules[1].removeprefix('layer_'))}."
    modules = modules[2:]
  return prefix + ".".join([_MODULES.get(m, m) for m in modules] + [_LEAVES[leaf]])


def _hf_shape(path: tuple, shape: tuple) -> tuple:
  """Hugging Face's shape for a genvis parameter: 1-D vectors, or [in, out] matrices."""
  if path == _HEAD:
    return shape[::-1]
  if path[-1] in ("bias", "scale"):
    return (math.prod(shape),)
  in_dims = 2 if path[-2:] == ("out", "kernel") else 1  # [heads, head_dim, D] <- [N*Dh, D]
  return (math.prod(shape[:in_dims]), math.prod(shape[in_dims:]))


def _external_key(name: str) -> str:
  return name if name == "lm_head.weight" else f"transformer.{name}"


def _is_buffer(name: str) -> bool:
  """Non-parameters some checkpoints carry: causal masks (h.i.attn.bias, 4-D, distinct
  from h.i.attn.c_attn.bias), GPT-2's old masked_bias and position ids."""
  return (name.endswith(".attn.bias") or name.endswith(".attn.masked_bias")
          or name == "position_ids")


def _loop_layout(config: gpt.GPTConfig, **changes) -> gpt.GPTConfig:
  return dataclasses.replace(config, scan_layers=False, **changes)


def _stack_layers(params: dict, num_layers: int) -> dict:
  """layer_0 ... layer_{L-1} -> one tree stacked on a leading axis, as nn.scan lays it out."""
  layers = [params["blocks"][f"layer_{i}"] for i in range(num_layers)]
  return {**params, "blocks": {"layers": jax.tree.map(lambda *x: np.stack(x), *layers)}}


def _unstack_layers(params: dict, num_layers: int) -> dict:
  stacked = params["blocks"]["layers"]
  return {**params, "blocks": {f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], stacked)
                               for i in range(num_layers)}}


def params_from_hf(state_dict: Mapping, config: gpt.GPTConfig, family: Family) -> dict:
  """genvis parameters (numpy, config.param_dtype) with exactly `GPT(config).init`'s tree."""
  tensors, original = {}, {}
  for key, value in state_dict.items():
    name = key.removeprefix("transformer.")
    if _is_buffer(name):
      continue
    if name in tensors:
      raise UserError(f"key {key!r} appears both with and without the 'transformer.' prefix")
    tensors[name], original[name] = value, key
  sizes = (f"n_layer={config.num_layers}, n_embd={config.d_model}, n_head={config.num_heads}, "
           f"vocab_size={config.vocab_size}, n_positions={config.max_len}")
  dtype = P.dtype(config.param_dtype)
  flat = {}
  for path, spec in flax.traverse_util.flatten_dict(
      gpt.abstract_params(_loop_layout(config))).items():
    name, hf_shape = _hf_name(path, family), _hf_shape(path, spec.shape)
    if name not in tensors:
      raise UserError(f"missing key {_external_key(name)!r} (shape {hf_shape}) in the "
                      f"{family.architecture} checkpoint ({sizes})")
    value = hf_files.to_numpy(tensors.pop(name))
    if value.shape != hf_shape:
      raise UserError(f"key {original[name]!r} has shape {tuple(value.shape)}, expected "
                      f"{hf_shape} from config.json ({sizes})")
    value = value.T if path == _HEAD else value.reshape(spec.shape)
    flat[path] = value.astype(dtype)
  if config.tie_embeddings:
    tensors.pop("lm_head.weight", None)  # tied: HF's head *is* the token embedding
  hf_files.refuse_leftovers(tensors, family.architecture, sizes, names=original)
  params = flax.traverse_util.unflatten_dict(flat)
  return _stack_layers(params, config.num_layers) if config.scan_layers else params


def params_to_hf(params, config: gpt.GPTConfig, family: Family) -> dict[str, np.ndarray]:
  """HF state dict (float32 numpy, "transformer."-prefixed names, no lm_head when tied).
  Without biases (use_bias=False) the HF model gets zero biases, which compute the same."""
  params = jax.tree.map(np.asarray, jax.device_get(params))
  if config.scan_layers:
    params = _unstack_layers(params, config.num_layers)
  given = flax.traverse_util.flatten_dict(params)
  state = {}
  for path, spec in flax.traverse_util.flatten_dict(
      gpt.abstract_params(_loop_layout(config, use_bias=True))).items():
    hf_shape = _hf_shape(path, spec.shape)
    if path in given:
      value = given.pop(path).astype(np.float32)
      if value.shape != spec.shape:
        raise UserError(f"params/{'/'.join(path)} has shape {value.shape}, expected "
                        f"{spec.shape} for the model config")
      value = value.T if path == _HEAD else value.reshape(hf_shape)
    elif path[-1] == "bias" and not config.use_bias:
      value = np.zeros(hf_shape, np.float32)
    else:
      raise UserError(f"params have no {'/'.join(path)} (expected shape {spec.shape})")
    state[_external_key(_hf_name(path, family))] = value
  if given:
    raise UserError(f"params/{'/'.join(sorted(given)[0])} is not a parameter of the model "
                    "config")
  return state


# ------------------------------------------------------------------------------ API
def from_hf(state_dict: Mapping, hf_config, *, family: str | None = None,
            **overrides) -> tuple[dict, dict]:
  """(GPTConfig fields, params) from a HF state dict (numpy arrays or torch tensors) and its
  config (dict, transformers config, or config.json path). `overrides` may set
  RUNTIME_FIELDS, e.g. scan_layers=True (params are then stacked as nn.scan wants)."""
  hf_config = hf_files.config_dict(hf_config)
  fam = family_of(hf_config, family)
  fields = model_fields(hf_config, fam, **overrides)
  return fields, params_from_hf(state_dict, gpt.GPTConfig(**fields), fam)


def to_hf(params, config: gpt.GPTConfig, *, family: str | None = None,
          **hf_config_overrides) -> tuple[dict, dict]:
  """(HF state dict, HF config dict) for genvis params. `family` defaults to the one the
  config implies (RMS norm: ImageGPT; post-LN: GPT-1; else GPT-2); overrides are added to
  config.json."""
  if family is None:
    family = ("imagegpt" if config.norm == "rms"
              else "gpt1" if config.norm_position == "post" else "gpt2")
  fam = FAMILIES[family]
  hf_config = {**to_hf_config(config, fam), **hf_config_overrides}
  return params_to_hf(params, config, fam), hf_config


def load_hf_dir(directory: str, *, family: str | None = None, **overrides) -> tuple[dict, dict]:
  """(GPTConfig fields, params) from a saved Hugging Face GPT-2 / GPT-1 / ImageGPT folder."""
  state_dict, hf_config = hf_files.read_dir(directory)
  return from_hf(state_dict, hf_config, family=family, **overrides)


def save_hf_dir(params, config: gpt.GPTConfig, directory: str, *, family: str | None = None,
                **hf_config_overrides) -> None:
  """Write config.json + model.safetensors that transformers' `from_pretrained` loads."""
  state_dict, hf_config = to_hf(params, config, family=family, **hf_config_overrides)
  hf_files.write_dir(state_dict, hf_config, directory)


# ------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
  from genvis.convert import lm_workdir  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(
      prog="python -m genvis.convert.hf_gpt",
      description="Import a local Hugging Face GPT-2 / GPT-1 directory into a genvis workdir.")
  parser.add_argument("--hf_dir", required=True, help="config.json + model.safetensors or "
                      "pytorch_model.bin (+ tokenizer.json)")
  parser.add_argument("--workdir", required=True, help="a new genvis workdir")
  parser.add_argument("--family", choices=sorted(FAMILIES), default=None,
                      help="default: config.json's model_type")
  parser.add_argument("--tokenizer", default="",
                      help="a tokenizer.json (default: the one in --hf_dir), or 'config' to "
                      "keep config.data's tokenizer")
  parser.add_argument("--config", default="",
                      help="the genvis config file[:variant] the workdir's config starts from "
                      "(default: configs/gpt_lm.py:size=gpt2|gpt1,tok=bpe)")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override, e.g. data.batch_size=8 or "
                      "model.scan_layers=True (model: only " + ", ".join(RUNTIME_FIELDS) + ")")
  args = parser.parse_args(argv)
  try:
    overrides = config_lib.parse_overrides(args.set)
    model_overrides = {k.removeprefix("model."): overrides.pop(k)
                       for k in list(overrides) if k.startswith("model.")}
    if family_of(hf_files.config_dict(args.hf_dir), args.family).name == "imagegpt":
      # A pixel model's workdir needs its palette (the image processor's clusters) and an
      # image config, which this language-model importer does not write.
      raise UserError("ImageGPT checkpoints are not imported into a workdir by this command; "
                      "use genvis.convert.hf_gpt.load_hf_dir in Python")
    tokenizer = args.tokenizer or os.path.join(args.hf_dir, "tokenizer.json")
    if tokenizer != "config" and not os.path.isfile(tokenizer):
      raise UserError(f"no tokenizer at {tokenizer}: pass --tokenizer=PATH to the checkpoint's "
                      "tokenizer.json, or --tokenizer=config to keep config.data.tokenizer")
    fields, params = load_hf_dir(args.hf_dir, family=args.family, **model_overrides)
    spec = args.config or lm_workdir.default_spec(
        "gpt1" if fields["norm_position"] == "post" else "gpt2")
    config = lm_workdir.write_lm_workdir(
        fields, params, args.workdir, tokenizer_path=None if tokenizer == "config" else tokenizer,
        config_spec=spec, overrides=overrides)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.workdir} (step 0). Sample with:\n  "
        + lm_workdir.sample_command(config, spec, args.workdir))
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Hugging Face model folders on disk: config.json plus weights, for any architecture.

Reading needs only `safetensors` (its numpy API) for model.safetensors (single or sharded);
torch is imported only for a legacy pytorch_model.bin, loaded with `weights_only=True` so a
pickle cannot run code. Writing produces config.json + model.safetensors, the layout
transformers' `from_pretrained` reads. Model-specific name mapping lives with each model
(hf_gpt.py, hf_clip.py, hf_mae.py); this file only knows the tensor layouts that the ViT-style
converters share (`vit_param_from_hf`).
"""

import json
import os
from typing import Mapping

import jax
import numpy as np

from genvis import atomic_files
from genvis.errors import UserError, one_line

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"


def config_dict(hf_config) -> dict:
  """A config.json as a dict, from a dict, a transformers config, a file or a directory."""
  if isinstance(hf_config, Mapping):
    return dict(hf_config)
  if hasattr(hf_config, "to_dict"):
    return hf_config.to_dict()
  path = os.fspath(hf_config)
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file (expected a Hugging Face config.json)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def to_numpy(value) -> np.ndarray:
  """A numpy array from a numpy array or a torch tensor (without importing torch)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # torch cannot hand bfloat16 to numpy
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def refuse_leftovers(tensors: Mapping, architecture: str, sizes: str, names=None):
  """A one-line UserError naming the first of `tensors` (checkpoint keys no parameter took)
  and its shape; nothing when none are left. `names` maps a key to how the file spells it."""
  if not tensors:
    return
  key = sorted(tensors)[0]
  more = f" (and {len(tensors) - 1} more)" if len(tensors) > 1 else ""
  shown = (names or {}).get(key, key)
  raise UserError(f"unexpected key {shown!r} of shape {tuple(to_numpy(tensors[key]).shape)}"
                  f"{more}: not part of a {architecture} with {sizes}")


def read_dir(directory: str) -> tuple[dict, dict]:
  """(state dict of numpy arrays, config dict) from a saved Hugging Face model folder."""
  if not os.path.isdir(directory):
    raise UserError(f"{directory}: no such directory (expected a Hugging Face model folder)")
  hf_config = config_dict(directory)
  single, index, torch_file = (os.path.join(directory, name) for name in
                               (SAFETENSORS_FILE, SAFETENSORS_INDEX, TORCH_FILE))
  if os.path.isfile(single):
    return _read_safetensors([single]), hf_config
  if os.path.isfile(index):
    with open(index, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    return _read_safetensors([os.path.join(directory, s) for s in shards]), hf_config
  if os.path.isfile(torch_file):
    import torch  # pylint: disable=import-outside-toplevel
    try:
      state_dict = torch.load(torch_file, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"{torch_file}: cannot be read ({one_line(e)})") from None
    return {k: to_numpy(v) for k, v in state_dict.items()}, hf_config
  raise UserError(f"{directory} has no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or "
                  f"{TORCH_FILE}")


def write_dir(state_dict: Mapping[str, np.ndarray], hf_config: dict, directory: str):
  """config.json + model.safetensors, each written whole under a temporary name and then
  renamed, so a crash never leaves half a file."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  with atomic_files.replacing(os.path.join(directory, SAFETENSORS_FILE)) as weights:
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, weights,
              metadata={"format": "pt"})  # transformers checks the format tag
  atomic_files.write_text(os.path.join(directory, CONFIG_FILE),
                          json.dumps(hf_config, indent=2, sort_keys=True))


def _read_safetensors(paths) -> dict:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  state_dict = {}
  for path in paths:
    try:
      state_dict.update(load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"{path}: cannot be read ({one_line(e)})") from None
  return state_dict


def stack_layers(tree):
  """Every blocks/{layer_0, ...} -> blocks/layers stacked on a leading axis, the layout of
  genvis's scanned blocks (nn.scan), anywhere in a nested dict of arrays."""
  if not isinstance(tree, dict):
    return tree
  if "layer_0" in tree:
    layers = [tree[f"layer_{i}"] for i in range(len(tree))]
    return {"layers": jax.tree.map(lambda *x: np.stack(x), *layers)}
  return {k: stack_layers(v) for k, v in tree.items()}


def vit_param_from_hf(path: tuple, values: list, shape: tuple) -> np.ndarray:
  """Hugging Face (PyTorch) tensor(s) -> the genvis parameter at `path` of `shape`, for the
  ViT-style towers of CLIP and MAE: the patch embedding's convolution, q/k/v given as three
  tensors, Linear weights stored [out, in]."""
  if path[-2:] == ("patch_embed", "kernel"):  # [D, C, py, px] -> [(py, px, c), D]
    return values[0].transpose(2, 3, 1, 0).reshape(shape)
  if path[-2:-1] == ("qkv",):
    if path[-1] == "kernel":
      return np.stack([v.T for v in values], axis=1).reshape(shape)
    return np.stack(values).reshape(shape)
  if path[-1] == "kernel":  # torch Linear weights are [out, in]
    return values[0].T.reshape(shape)
  return values[0].reshape(shape)

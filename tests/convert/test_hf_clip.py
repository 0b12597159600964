"""Hugging Face CLIPModel import: image and text embeddings and logits against transformers'
PyTorch model built from a small CLIPConfig (randomly initialised, nothing downloaded), in
both EOT pooling modes, plus config mapping, saved folders and one-line errors."""

import jax
import numpy as np
import pytest

from genvis.convert import hf_clip
from genvis.errors import UserError
from genvis.models import clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # max |difference| of embeddings and logits, float32
VOCAB, MAX_LEN, EOS = 99, 16, 5  # EOS is not the largest id
IMAGES = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)


def hf_config(eos_token_id=EOS, **text):
  return transformers.CLIPConfig(
      projection_dim=24,
      text_config={**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=MAX_LEN, hidden_act="quick_gelu",
                          bos_token_id=0, pad_token_id=1, eos_token_id=eos_token_id), **text},
      vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, image_size=16, patch_size=4,
                         hidden_act="quick_gelu"))


def hf_model(eos_token_id):
  torch.manual_seed(0)
  model = transformers.CLIPModel(hf_config(eos_token_id)).eval()
  # HF starts LayerNorms at 1 and biases at 0, so a mix-up among them would go unseen: every
  # parameter gets noise (the logit scale too: it stays far below the clip at 100).
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
  return model


def caption_tokens(eos_token_id):
  """Four captions of different lengths; after the EOT, padding (0s, or more EOTs)."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(6, VOCAB - 1, size=(4, 12))
  tokens[:, 0] = 0  # bos
  eot = VOCAB - 1 if eos_token_id == hf_clip.LEGACY_EOS_TOKEN_ID else eos_token_id
  for row, length in enumerate((5, 11, 3, 8)):
    tokens[row, length] = eot
    tokens[row, length + 1:] = 0 if row % 2 else eot
  return tokens.astype(np.int32)


def hf_outputs(model, tokens):
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(),
                pixel_values=torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy()))
  return {k: out[k].numpy() for k in ("image_embeds", "text_embeds", "logits_per_image")}


def genvis_outputs(fields, params, tokens):
  config = clip.CLIPConfig(**fields)
  out = jax.jit(lambda p: clip.CLIP(config).apply({"params": p}, IMAGES, tokens))(params)
  return jax.tree.map(np.asarray, out)


@pytest.fixture(scope="module")
def first_eos_model():
  return hf_model(EOS)


# "first": eos_token_id=5 is pooled at its first occurrence (the ids after it are larger);
# "legacy": HF's eos_token_id == 2 pools at argmax(ids), imported as eot_token_id=-1. The
# legacy case also imports into scanned layers from numpy arrays.
@pytest.mark.parametrize("mode", ["first", "legacy"])
def test_imported_clip_matches_hugging_face(first_eos_model, mode):
  legacy = mode == "legacy"
  model = hf_model(hf_clip.LEGACY_EOS_TOKEN_ID) if legacy else first_eos_model
  tokens = caption_tokens(model.config.text_config.eos_token_id)
  reference = hf_outputs(model, tokens)
  state = model.state_dict()
  if legacy:
    state = {k: v.numpy().copy() for k, v in state.items()}
  fields, params = hf_clip.from_hf(state, model.config, scan_layers=legacy)
  assert fields["eot_token_id"] == (clip.ARGMAX_EOT if legacy else EOS)
  assert (fields["activation"], fields["layer_norm_epsilon"], fields["embed_dim"]) == (
      "quick_gelu", 1e-5, 24)
  assert ("layers" in params["text"]["blocks"]) == legacy
  ours = genvis_outputs(fields, params, tokens)
  for key, expected in reference.items():
    diff = float(np.abs(ours[key] - expected).max())
    print(f"{mode} {key}: max |genvis - HF| = {diff:.2e}")
    assert diff < TOLERANCE, key
  assert float(np.abs(reference["logits_per_image"]).max()) > 1.0  # not trivially small
  np.testing.assert_allclose(ours["logit_scale"],
                             np.exp(model.logit_scale.item()), rtol=1e-6)


def test_saved_folder_with_old_position_id_buffers_imports(first_eos_model, tmp_path):
  first_eos_model.save_pretrained(tmp_path)  # config.json + model.safetensors
  fields, params = hf_clip.load_hf_dir(str(tmp_path))
  assert fields == hf_clip.config_from_hf(first_eos_model.config)
  expected = first_eos_model.text_model.final_layer_norm.weight.detach().numpy()
  np.testing.assert_array_equal(params["text"]["ln_f"]["scale"], expected)
  # transformers < 4.31 saved the position ids of both towers: they are dropped on import.
  state = dict(first_eos_model.state_dict())
  state["text_model.embeddings.position_ids"] = torch.arange(MAX_LEN)[None]
  state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
  _, with_buffers = hf_clip.from_hf(state, first_eos_model.config)
  jax.tree.map(np.testing.assert_array_equal, with_buffers, params)


def test_config_mapping_and_overrides():
  fields = hf_clip.config_from_hf(hf_config().to_dict(), param_dtype="bfloat16",
                                  dtype="bfloat16")
  assert (fields["vision_d_model"], fields["vision_layers"], fields["vision_heads"],
          fields["vision_mlp_dim"]) == (48, 2, 4, 96)
  assert (fields["text_d_model"], fields["text_layers"], fields["text_heads"],
          fields["text_mlp_dim"], fields["vocab_size"], fields["max_len"]) == (
              32, 2, 4, 64, VOCAB, MAX_LEN)
  assert (fields["image_size"], fields["patch_size"], fields["loss"]) == (16, 4, "clip")
  assert fields["param_dtype"] == "bfloat16"
  # A config.json that leaves out keys gets transformers' defaults (OpenAI's ViT-B/32).
  sparse = hf_clip.config_from_hf({"model_type": "clip", "text_config": {"eos_token_id": 2}})
  assert sparse == {**clip.config_for("B/32"), "eot_token_id": clip.ARGMAX_EOT,
                    "vision_mlp_dim": 3072, "text_mlp_dim": 2048}


def test_bad_checkpoints_and_configs_are_user_errors(first_eos_model):
  config = first_eos_model.config
  state = dict(first_eos_model.state_dict())
  with pytest.raises(UserError, match="model_type='vit'"):
    hf_clip.config_from_hf({"model_type": "vit"})
  with pytest.raises(UserError, match="model.vision_layers comes from config.json"):
    hf_clip.config_from_hf(config, vision_layers=3)
  with pytest.raises(UserError, match="text_config.hidden_act='gelu' but vision_config"):
    hf_clip.config_from_hf(hf_config(hidden_act="gelu"))
  with pytest.raises(UserError, match="unexpected key 'extra.weight' of shape \\(2,\\)"):
    hf_clip.from_hf({**state, "extra.weight": np.zeros(2)}, config)
  missing = {k: v for k, v in state.items() if k != "text_model.final_layer_norm.bias"}
  with pytest.raises(UserError, match="missing key 'text_model.final_layer_norm.bias'"):
    hf_clip.from_hf(missing, config)
  wrong = {**state, "visual_projection.weight": np.zeros((24, 32), np.float32)}
  with pytest.raises(UserError, match=r"'visual_projection.weight' has shape \(24, 32\), "
                                      r"expected \(24, 48\)"):
    hf_clip.from_hf(wrong, config)

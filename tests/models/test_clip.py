"""CLIP: output shapes and unit norms, the clipped temperature, EOT pooling, the vision tower
as a ViT, config errors and the published parameter counts of the paper's variants."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import clip, vit
from genvis.nn import contrastive

EOT = 3  # deliberately not the largest id, as with genvis's BPE tokenizer
VOCAB, MAX_LEN = 20, 8
TINY = dict(embed_dim=12, image_size=8, patch_size=4, vision_d_model=16, vision_layers=2,
            vision_heads=2, text_d_model=16, text_layers=2, text_heads=2, vocab_size=VOCAB,
            max_len=MAX_LEN, eot_token_id=EOT)


def tiny_config(**overrides) -> clip.CLIPConfig:
  return clip.CLIPConfig(**clip.config_for("cpu", **{**TINY, **overrides}))


def random_images(batch=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, 8, 8, 3)), jnp.float32)


def caption_tokens():
  """Three rows of ids in 4..19 with the EOT at positions 4, 7 and 2."""
  tokens = np.random.default_rng(1).integers(EOT + 1, VOCAB, size=(3, MAX_LEN))
  for row, position in enumerate((4, 7, 2)):
    tokens[row, position] = EOT
  return tokens.astype(np.int32)


class Tiny:
  """One initialised tiny CLIP and its compiled forward pass and text encoder."""

  def __init__(self):
    self.config = tiny_config()
    self.model = clip.CLIP(self.config)
    # An "rbg" key: compiling init with the default threefry keys takes ~2.5x longer on CPU.
    key = jax.random.key(0, impl="unsafe_rbg")
    init = jax.jit(self.model.init)
    self.params = nn.meta.unbox(
        init(key, random_images(1), jnp.zeros((1, MAX_LEN), jnp.int32))["params"])
    self.forward = jax.jit(lambda p, x, t: self.model.apply({"params": p}, x, t))
    self._texts = jax.jit(lambda p, t: self.model.apply({"params": p}, t,
                                                        method="encode_texts"))
    self._texts_at = jax.jit(lambda p, t, e: self.model.apply(
        {"params": p}, t, eot_positions=e, method="encode_texts"))

  def encode_texts(self, tokens, eot_positions=None):
    """Text embeddings pooled where the model finds the EOT, or at `eot_positions`."""
    if eot_positions is None:
      return np.asarray(self._texts(self.params, jnp.asarray(tokens)))
    return np.asarray(self._texts_at(self.params, jnp.asarray(tokens),
                                     jnp.asarray(eot_positions, jnp.int32)))


@pytest.fixture(scope="module")
def tiny():
  return Tiny()


def test_outputs_are_unit_embeddings_and_scaled_cosine_logits(tiny):
  out = jax.tree.map(np.asarray, tiny.forward(tiny.params, random_images(), caption_tokens()))
  chex.assert_shape(out["image_embeds"], (2, 12))
  chex.assert_shape(out["text_embeds"], (3, 12))
  chex.assert_shape(out["logits_per_image"], (2, 3))
  chex.assert_type([out["image_embeds"], out["text_embeds"], out["logits_per_image"]],
                   jnp.float32)
  np.testing.assert_allclose(np.linalg.norm(out["image_embeds"], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out["text_embeds"], axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out["logit_scale"], 1 / 0.07, rtol=1e-5)
  np.testing.assert_allclose(out["logits_per_image"],
                             out["logit_scale"] * out["image_embeds"] @ out["text_embeds"].T,
                             rtol=1e-5, atol=1e-5)
  assert "logit_bias" not in out and "logit_bias" not in tiny.params
  # Different inputs give different embeddings (the towers are not constant).
  assert np.abs(out["image_embeds"][0] - out["image_embeds"][1]).max() > 1e-3
  assert np.abs(out["text_embeds"][0] - out["text_embeds"][1]).max() > 1e-3


def test_parameter_tree_and_dtypes(tiny):
  params = tiny.params
  assert set(params) == {"vision", "text", "image_projection", "text_projection", "log_scale"}
  assert set(params["text"]) == {"wte", "wpe", "blocks", "ln_f"}  # GPT's names
  chex.assert_shape(params["text"]["wpe"], (MAX_LEN, 16))
  chex.assert_shape(params["image_projection"]["kernel"], (16, 12))
  assert "bias" not in params["image_projection"] and "bias" not in params["text_projection"]
  # CLIP's ViT: a LayerNorm before the blocks, a patch projection without bias.
  assert "ln_pre" in params["vision"]["encoder"]
  assert set(params["vision"]["patch_embed"]) == {"kernel"}
  np.testing.assert_allclose(params["log_scale"], contrastive.CLIP_INIT_LOG_SCALE, rtol=1e-7)
  bf16 = clip.abstract_params(tiny_config(param_dtype="bfloat16"))
  assert bf16["text"]["wpe"].dtype == jnp.bfloat16
  assert bf16["log_scale"].dtype == jnp.float32  # the temperature keeps full precision


def test_vision_tower_is_a_vit_pooled_at_the_class_token(tiny):
  images = random_images()
  config = tiny.config.vision_config()
  features = jax.jit(vit.ViT(config).apply)({"params": tiny.params["vision"]}, images)
  expected = features @ tiny.params["image_projection"]["kernel"]
  expected /= jnp.linalg.norm(expected, axis=1, keepdims=True)
  out = tiny.forward(tiny.params, images, caption_tokens())
  np.testing.assert_allclose(out["image_embeds"], expected, rtol=1e-5, atol=1e-6)
  # Default ViTs keep their tree: no ln_pre, a patch bias.
  plain = vit.abstract_params(vit.ViTConfig(**vit.config_for("Ti/4", image_size=8,
                                                             num_layers=1)))
  assert "ln_pre" not in plain["encoder"] and "bias" in plain["patch_embed"]


def test_temperature_starts_at_1_over_0_07_and_is_clipped_at_100(tiny):
  scale_and_bias = lambda log_scale: clip.CLIP(tiny.config).apply(
      {"params": {"log_scale": log_scale}}, method="logit_scale_and_bias")
  scale, bias = scale_and_bias(jnp.float32(contrastive.CLIP_INIT_LOG_SCALE))
  assert bias is None
  np.testing.assert_allclose(scale, 1 / 0.07, rtol=1e-6)
  np.testing.assert_allclose(scale_and_bias(jnp.float32(math.log(50.0)))[0], 50.0, rtol=1e-6)
  assert float(scale_and_bias(jnp.float32(math.log(1000.0)))[0]) == 100.0
  # Once clipped the temperature gets no gradient; below the clip it does.
  grad = jax.grad(lambda s: scale_and_bias(s)[0])
  assert float(grad(jnp.float32(math.log(1000.0)))) == 0.0
  np.testing.assert_allclose(grad(jnp.float32(math.log(50.0))), 50.0, rtol=1e-5)
  # The forward pass uses the clipped scale.
  clipped = {**tiny.params, "log_scale": jnp.float32(math.log(1000.0))}
  out = tiny.forward(clipped, random_images(), caption_tokens())
  assert float(out["logit_scale"]) == 100.0
  np.testing.assert_allclose(out["logits_per_image"],
                             100.0 * out["image_embeds"] @ out["text_embeds"].T,
                             rtol=1e-5, atol=1e-4)


def test_siglip_scale_is_not_clipped_and_has_a_bias():
  model = clip.CLIP(tiny_config(loss="siglip"))
  params = model.init(jax.random.key(0), method="logit_scale_and_bias")["params"]
  params = nn.meta.unbox(params)
  np.testing.assert_allclose(params["log_scale"], math.log(10.0), rtol=1e-7)
  np.testing.assert_allclose(params["logit_bias"], -10.0)
  scale, bias = model.apply({"params": {**params, "log_scale": jnp.float32(math.log(1e3))}},
                            method="logit_scale_and_bias")
  np.testing.assert_allclose(scale, 1e3, rtol=1e-5)
  np.testing.assert_allclose(bias, -10.0)


def test_find_eot_positions():
  tokens = jnp.array([[5, 3, 9, 3],    # the first EOT, not the largest id
                      [5, 6, 7, 8],    # no EOT: the last position
                      [3, 3, 3, 3]])   # padded with the EOT id: still the first
  np.testing.assert_array_equal(clip.find_eot_positions(tokens, 3), [1, 3, 0])
  np.testing.assert_array_equal(clip.find_eot_positions(tokens, clip.ARGMAX_EOT), [2, 3, 0])


def test_text_is_pooled_at_the_first_eot_and_ignores_what_follows(tiny):
  tokens = caption_tokens()
  eot_at = np.array([4, 7, 2])
  pooled = tiny.encode_texts(tokens)
  np.testing.assert_allclose(pooled, tiny.encode_texts(tokens, eot_at), rtol=1e-6, atol=1e-7)
  # Anything after the EOT (here: more EOTs, as padding, and large ids) changes nothing.
  after = tokens.copy()
  after[0, 5:] = [EOT, VOCAB - 1, EOT]
  after[2, 3:] = VOCAB - 1
  np.testing.assert_allclose(tiny.encode_texts(after), pooled, rtol=1e-6, atol=1e-7)
  # A token before (or at) the EOT does change it.
  before = tokens.copy()
  before[:, 1] = np.where(tokens[:, 1] == 4, 5, 4)
  assert np.abs(tiny.encode_texts(before) - pooled).max(axis=1).min() > 1e-3
  moved = tokens.copy()
  moved[0, 4] = 4  # row 0's EOT is gone: pooled at the last position instead
  changed = tiny.encode_texts(moved)
  assert np.abs(changed[0] - pooled[0]).max() > 1e-3
  np.testing.assert_allclose(changed[1:], pooled[1:], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(changed[0], tiny.encode_texts(moved, [MAX_LEN - 1, 7, 2])[0],
                             rtol=1e-6, atol=1e-7)


def test_text_attention_is_causal(tiny):
  tokens = caption_tokens()
  last = tiny.encode_texts(tokens, [MAX_LEN - 1] * 3)
  changed = tokens.copy()
  changed[:, 0] = np.where(tokens[:, 0] == 4, 5, 4)
  # The last position reads the first token, the first position reads nothing after it.
  assert np.abs(tiny.encode_texts(changed, [MAX_LEN - 1] * 3) - last).max() > 1e-3
  first = tiny.encode_texts(tokens, [0, 0, 0])
  later = tokens.copy()
  later[:, 1:] = VOCAB - 1
  np.testing.assert_allclose(tiny.encode_texts(later, [0, 0, 0]), first, rtol=1e-6, atol=1e-7)


def test_bad_inputs_and_configs_are_user_errors(tiny):
  with pytest.raises(UserError, match=r"tokens of shape \(1, 9\).*max_len=8"):
    tiny.model.apply({"params": tiny.params}, jnp.zeros((1, 9), jnp.int32),
                     method="encode_texts")
  with pytest.raises(UserError, match=r"images of shape \(1, 16, 16, 3\)"):
    tiny.model.apply({"params": tiny.params}, jnp.zeros((1, 16, 16, 3)),
                     method="encode_images")
  with pytest.raises(UserError, match="unknown CLIP variant 'H/14'"):
    clip.config_for("H/14")
  with pytest.raises(UserError, match="config.model.loss='sigmoid'"):
    tiny_config(loss="sigmoid")
  with pytest.raises(UserError, match="config.model.eot_token_id=20 is not a token id"):
    tiny_config(eot_token_id=VOCAB)
  with pytest.raises(UserError, match="config.model.text_d_model=16 is not divisible by "
                                      "config.model.text_heads=3"):
    tiny_config(text_heads=3)
  with pytest.raises(UserError, match="config.model.vocab_size=0 must be >= 1"):
    tiny_config(vocab_size=0)
  with pytest.raises(UserError, match="image_size=30 is not divisible"):
    tiny_config(image_size=30)
  with pytest.raises(UserError, match="config.model.init_std=-0.1 must be >= 0"):
    tiny_config(init_std=-0.1)


def test_towers_start_at_openai_scale_unless_init_std_is_set(tiny):
  # init_std = 0, the default, means width^-1/2 of each tower.
  config = tiny_config(text_d_model=64, text_heads=2)
  assert config.vision_config().init_std == pytest.approx(16 ** -0.5)
  assert config.text_config().init_std == pytest.approx(64 ** -0.5)
  fixed = tiny_config(init_std=0.02)
  assert fixed.vision_config().init_std == fixed.text_config().init_std == 0.02
  # The parameters follow: the text token table of the tiny model is normal(16^-1/2).
  assert np.std(tiny.params["text"]["wte"]["embedding"]) == pytest.approx(0.25, rel=0.25)


def test_named_variants_follow_the_paper():
  large = clip.config_for("ViT-L/14-336")
  assert (large["embed_dim"], large["image_size"], large["patch_size"]) == (768, 336, 14)
  assert (large["vision_d_model"], large["vision_layers"], large["vision_heads"]) == (
      1024, 24, 16)
  assert (large["text_d_model"], large["text_layers"], large["text_heads"]) == (768, 12, 12)
  assert (large["max_len"], large["vocab_size"], large["eot_token_id"]) == (77, 49408, 49407)
  assert clip.config_for("clip-B/16")["patch_size"] == 16
  for name, fields in clip.VARIANTS.items():
    for side in ("vision", "text"):
      assert fields[f"{side}_d_model"] // fields[f"{side}_heads"] == (
          32 if name == "cpu" else 64)


# Hugging Face's parameter counts of openai/clip-vit-{base-patch32, base-patch16,
# large-patch14, large-patch14-336} (the logit scale included).
HF_COUNTS = {"B/32": 151_277_313, "B/16": 149_620_737, "L/14": 427_616_513,
             "L/14-336": 427_944_193}


def hf_meta_count(config: clip.CLIPConfig) -> int:
  """The parameters of transformers' CLIPModel of the same sizes, built without memory."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  hf_config = transformers.CLIPConfig(
      projection_dim=config.embed_dim,
      text_config=dict(vocab_size=config.vocab_size, hidden_size=config.text_d_model,
                       intermediate_size=4 * config.text_d_model,
                       num_hidden_layers=config.text_layers,
                       num_attention_heads=config.text_heads,
                       max_position_embeddings=config.max_len, bos_token_id=0,
                       eos_token_id=config.eot_token_id, pad_token_id=0),
      vision_config=dict(hidden_size=config.vision_d_model,
                         intermediate_size=4 * config.vision_d_model,
                         num_hidden_layers=config.vision_layers,
                         num_attention_heads=config.vision_heads,
                         image_size=config.image_size, patch_size=config.patch_size))
  with torch.device("meta"):  # shapes only, no memory
    return sum(p.numel() for p in transformers.CLIPModel(hf_config).parameters())


@pytest.mark.parametrize("variant", sorted(HF_COUNTS))
def test_parameter_counts_match_the_published_checkpoints(variant):
  # Scanned layers: the same count, traced once per tower rather than once per layer.
  config = clip.CLIPConfig(**clip.config_for(variant, scan_layers=True))
  count = clip.count_params(clip.abstract_params(config))
  assert count == HF_COUNTS[variant]
  assert hf_meta_count(config) == HF_COUNTS[variant]


def test_cpu_size_parameter_count_matches_transformers():
  config = clip.CLIPConfig(**clip.config_for("cpu", vocab_size=1000))
  count = clip.count_params(clip.abstract_params(config))
  print(f"CLIP cpu size (vocabulary 1000): {count:,} parameters")
  assert count == hf_meta_count(config)

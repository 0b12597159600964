"""MAE: masking, the encoder on visible patches, the masked loss, the "w/ [M]" variant, and
parity with Hugging Face's ViTMAEForPreTraining and ViTModel built from small configs."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import mae, vit
from genvis.nn.embeddings import sincos_2d

# 16x16 RGB images in 4x4 patches: N = 16 patches, 4 of them visible at mask ratio 0.75.
SMALL = dict(image_size=16, patch_size=4, channels=3, d_model=32, num_layers=2, num_heads=4,
             decoder_d_model=16, decoder_layers=1, decoder_heads=2)
N, KEEP, PATCH_DIM = 16, 4, 48
TOLERANCE = 1e-4  # float32 parity with transformers


def small_config(**overrides) -> mae.MAEConfig:
  return mae.MAEConfig(**mae.config_for("B/4", **{**SMALL, **overrides}))


def random_images(batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, 16, 16, 3)).astype(np.float32)


def random_noise(batch=2, seed=1):
  return np.random.default_rng(seed).uniform(size=(batch, N)).astype(np.float32)


class Compiled:
  """An MAE, its params at init and jitted methods (eager Linen calls are slow)."""

  def __init__(self, config):
    self.config, self.model = config, mae.MAE(config)
    init = jax.jit(lambda x, n: self.model.init(jax.random.key(0), x, noise=n))
    self.params = nn.meta.unbox(init(random_images(), random_noise())["params"])
    self.forward = jax.jit(lambda p, x, n: self.model.apply({"params": p}, x, noise=n))
    self.encode_masked = jax.jit(lambda p, x, n: self.model.apply(
        {"params": p}, x, noise=n, method="encode_masked"))


@pytest.fixture(scope="module")
def small():
  return Compiled(small_config())


# ------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.6])
def test_masking_keeps_exactly_n_keep_and_ids_restore_inverts_the_shuffle(ratio):
  batch, keep = 3, int(N * (1 - ratio))
  tokens = np.random.default_rng(0).normal(size=(batch, N, 8)).astype(np.float32)
  tokens[:, :, 0] = np.arange(N)  # feature 0 names the patch
  noise = np.random.default_rng(2).uniform(size=(batch, N)).astype(np.float32)
  kept, mask, ids_restore = map(np.asarray, mae.random_masking(jnp.asarray(tokens), ratio,
                                                               jnp.asarray(noise)))
  chex.assert_shape(kept, (batch, keep, 8))
  np.testing.assert_array_equal(mask.sum(axis=1), N - keep)  # per row, exactly
  ids_shuffle = np.argsort(ids_restore, axis=1)
  np.testing.assert_array_equal(ids_shuffle, np.argsort(noise, axis=1))
  for row in range(batch):
    kept_ids = kept[row, :, 0].astype(int)
    np.testing.assert_array_equal(kept_ids, ids_shuffle[row, :keep])  # lowest noise first
    np.testing.assert_array_equal(kept[row], tokens[row, kept_ids])
    # The mask marks exactly the dropped patches.
    np.testing.assert_array_equal(np.flatnonzero(mask[row] == 0), np.sort(kept_ids))
  shuffled = np.take_along_axis(tokens, ids_shuffle[:, :, None], axis=1)
  np.testing.assert_array_equal(mae.unshuffle(shuffled, ids_restore), tokens)


def test_masking_noise_of_the_wrong_shape_is_a_user_error(small):
  with pytest.raises(UserError, match=r"noise of shape \(2, 15\).*\(2, 16\)"):
    small.model.apply({"params": small.params}, random_images(), noise=np.zeros((2, 15)))


# ------------------------------------------------------------------------------ model
def test_shapes_and_the_encoder_sees_only_the_visible_patches(small):
  images, noise = random_images(), random_noise()
  out = small.forward(small.params, images, noise)
  chex.assert_shape(out["pred"], (2, N, PATCH_DIM))
  chex.assert_shape((out["mask"], out["ids_restore"]), (2, N))
  chex.assert_type(out["loss"], jnp.float32)
  assert np.isfinite(float(out["loss"]))
  latent, mask, _ = small.encode_masked(small.params, images, noise)
  chex.assert_shape(latent, (2, 1 + KEEP, 32))  # class token + n_keep
  np.testing.assert_array_equal(mask, out["mask"])
  whole = small.model.apply({"params": small.params}, images, method="encode_images")
  chex.assert_shape(whole, (2, 1 + N, 32))
  chex.assert_shape(mae.mae_encoder_features(small.model, small.params, images), (2, 32))


def test_loss_is_the_mean_over_masked_patches_of_per_patch_mse(small):
  images, noise = random_images(), random_noise()
  out = jax.tree.map(np.asarray, small.forward(small.params, images, noise))
  target = images.reshape(2, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, N, 48)
  per_patch = ((out["pred"] - target) ** 2).mean(-1)
  expected = (per_patch * out["mask"]).sum() / out["mask"].sum()
  np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
  # Only masked patches count: changing predictions on visible ones leaves the loss alone.
  visible = out["mask"][..., None] == 0
  changed = np.where(visible, out["pred"] + 5.0, out["pred"])
  np.testing.assert_allclose(mae.masked_mse(changed, target, out["mask"]), out["loss"],
                             rtol=1e-6)
  masked = np.where(visible, out["pred"], out["pred"] + 5.0)
  assert float(mae.masked_mse(masked, target, out["mask"])) > float(out["loss"]) + 1.0


def test_norm_pix_targets_are_each_patch_standardised(small):
  config = dataclasses.replace(small.config, norm_pix_loss=True)
  images = random_images() * 3.0 + 2.0
  target = np.asarray(mae.patch_targets(images, config))
  raw = np.asarray(mae.patch_targets(images, small.config))
  expected = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(raw.var(-1, ddof=1, keepdims=True)
                                                           + 1e-6)
  np.testing.assert_allclose(target, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(target.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(target.var(-1, ddof=1), 1.0, rtol=1e-4)
  norm_model = mae.MAE(config)
  out = jax.jit(lambda p: norm_model.apply({"params": p}, images, noise=random_noise()))(
      small.params)
  plain = small.forward(small.params, images, random_noise())
  np.testing.assert_allclose(out["pred"], plain["pred"], rtol=1e-6)  # same network
  assert abs(float(out["loss"]) - float(plain["loss"])) > 1e-2  # a different target


def test_same_noise_same_result_and_the_masking_rng_stream(small):
  images = random_images()
  a = small.forward(small.params, images, random_noise(seed=3))
  b = small.forward(small.params, images, random_noise(seed=3))
  chex.assert_trees_all_equal(a, b)
  c = small.forward(small.params, images, random_noise(seed=4))
  assert np.any(np.asarray(a["mask"]) != np.asarray(c["mask"]))
  drawn = jax.jit(lambda p, seed: small.model.apply(
      {"params": p}, images, rngs={"masking": jax.random.key(seed)}))
  chex.assert_trees_all_equal(drawn(small.params, 0), drawn(small.params, 0))
  assert np.any(np.asarray(drawn(small.params, 0)["mask"])
                != np.asarray(drawn(small.params, 1)["mask"]))


def test_the_encoder_is_a_vit_whose_params_load_by_name(small):
  encoder_config = small.config.encoder_config()
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(small.params["vit"]) == shapes(vit.abstract_params(encoder_config))
  assert "pos_embedding" not in small.params["vit"]  # fixed sin-cos: a constant
  images = random_images()
  features = jax.jit(vit.ViT(encoder_config).apply)({"params": small.params["vit"]}, images)
  np.testing.assert_allclose(features, mae.mae_encoder_features(
      small.model, small.params, images), rtol=1e-6, atol=1e-6)


def test_encoder_mask_tokens_variant_feeds_every_patch_to_the_encoder(small):
  variant = Compiled(small_config(encoder_mask_tokens=True))
  images, noise = random_images(), random_noise()
  latent, _, _ = variant.encode_masked(variant.params, images, noise)
  chex.assert_shape(latent, (2, 1 + N, 32))
  chex.assert_shape(variant.params["encoder_mask_token"], (1, 1, 32))
  assert "mask_token" not in variant.params["decoder"]
  out = variant.forward(variant.params, images, noise)
  chex.assert_shape(out["pred"], (2, N, PATCH_DIM))
  assert np.isfinite(float(out["loss"]))
  # Masked patches' pixels do not reach the encoder: they are replaced by the mask token.
  changed = np.asarray(images).copy()
  patch = int(np.flatnonzero(np.asarray(out["mask"])[0])[0])
  row, col = divmod(patch, 4)
  changed[0, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 1.0
  other, _, _ = variant.encode_masked(variant.params, changed, noise)
  np.testing.assert_allclose(other, latent, rtol=1e-6, atol=1e-6)


def test_config_errors_name_the_key():
  with pytest.raises(UserError, match=r"config.model.mask_ratio=0.99 keeps 0 of 16"):
    small_config(mask_ratio=0.99)
  with pytest.raises(UserError, match=r"config.model.decoder_d_model=18"):
    small_config(decoder_d_model=18, decoder_heads=2)
  with pytest.raises(UserError, match="decoder_d_model=16 is not divisible by .*heads=3"):
    small_config(decoder_heads=3)
  with pytest.raises(UserError, match="num_classes=10.*no head"):
    small_config(num_classes=10)
  with pytest.raises(UserError, match="norm_pix_loss=True needs patches of 2 or more values; "
                                      "patch_size=1 x channels=1 gives 1"):
    small_config(norm_pix_loss=True, patch_size=1, channels=1)
  with pytest.raises(UserError, match="unknown MAE variant 'Ti/16'"):
    mae.config_for("Ti/16")
  fields = mae.config_for("mae-H/14")
  assert (fields["d_model"], fields["patch_size"], fields["decoder_d_model"],
          fields["decoder_layers"], fields["pos_embedding"]) == (1280, 14, 512, 8, "sincos")


def test_parameter_count_matches_hugging_face_mae_b16():
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config = mae.MAEConfig(**mae.config_for("B/16"))
  count = mae.count_params(mae.abstract_params(config))
  hf_config = transformers.ViTMAEConfig(  # its defaults: ViT-B/16, decoder 512 x 8, 16 heads
      decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_intermediate_size=2048)
  with torch.device("meta"):
    hf_model = transformers.ViTMAEForPreTraining(hf_config)
  # HF stores the two fixed sin-cos tables as frozen parameters; genvis computes them.
  trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
  frozen = sum(p.numel() for p in hf_model.parameters() if not p.requires_grad)
  print(f"MAE B/16 + 512x8 decoder: genvis {count:,} params, HF {trainable:,} trainable + "
        f"{frozen:,} frozen")
  assert count == trainable == 111_655_680
  assert frozen == 197 * (768 + 512)


# ------------------------------------------------------------------------------ HF parity
@pytest.fixture(scope="module")
def hf_mae():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_config = transformers.ViTMAEConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=16, patch_size=4, num_channels=3, decoder_hidden_size=16,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
      mask_ratio=0.75)
  model = transformers.ViTMAEForPreTraining(hf_config).eval()
  # transformers 5.x leaves a freshly built model's fixed tables at zero (its _init_weights
  # zeroes the decoder's and skips the encoder's): run its own sin-cos initialisers.
  embeddings = model.vit.embeddings
  embeddings.patch_embeddings.projection._is_hf_initialized = False
  with torch.no_grad():
    embeddings.initialize_weights()
    model.decoder.initialize_weights(embeddings.patch_embeddings.num_patches)
    for parameter in model.parameters():  # noise on every trained weight, so mix-ups show
      if parameter.requires_grad:
        parameter.add_(0.1 * torch.randn_like(parameter))
  return model


def hf_outputs(model, images, noise, torch):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                noise=torch.from_numpy(noise))
  return {k: out[k].numpy() for k in ("loss", "logits", "mask", "ids_restore")}


def test_transformers_fixed_position_tables_are_genvis_sincos(hf_mae):
  np.testing.assert_allclose(hf_mae.vit.embeddings.position_embeddings[0].numpy(),
                             sincos_2d(4, 4, 32, cls_token=True), atol=1e-6)
  np.testing.assert_allclose(hf_mae.decoder.decoder_pos_embed[0].numpy(),
                             sincos_2d(4, 4, 16, cls_token=True), atol=1e-6)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_imported_mae_matches_hugging_face(hf_mae, norm_pix_loss):
  torch = pytest.importorskip("torch")
  from genvis.convert import hf_mae as convert  # pylint: disable=import-outside-toplevel
  hf_mae.config.norm_pix_loss = norm_pix_loss
  images, noise = random_images(), random_noise()
  reference = hf_outputs(hf_mae, images, noise, torch)
  fields, params = convert.from_hf(hf_mae.state_dict(), hf_mae.config)
  config = mae.MAEConfig(**fields)
  assert (config.layer_norm_epsilon, config.activation, config.norm_pix_loss) == (
      1e-12, "gelu", norm_pix_loss)
  ours = jax.tree.map(np.asarray, jax.jit(lambda p: mae.MAE(config).apply(
      {"params": p}, images, noise=noise))(params))
  np.testing.assert_array_equal(ours["mask"], reference["mask"])
  np.testing.assert_array_equal(ours["ids_restore"], reference["ids_restore"])
  pred_diff = float(np.abs(ours["pred"] - reference["logits"]).max())
  loss_diff = abs(float(ours["loss"]) - float(reference["loss"]))
  print(f"ViTMAEForPreTraining norm_pix_loss={norm_pix_loss}: max |pred diff| = "
        f"{pred_diff:.2e}, |loss diff| = {loss_diff:.2e} (loss {float(reference['loss']):.4f})")
  assert pred_diff < TOLERANCE and loss_diff < TOLERANCE
  assert np.abs(reference["logits"]).max() > 0.5  # not trivially small
  with torch.no_grad():  # the encoder alone, on the visible patches
    latent = hf_mae.vit(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                        noise=torch.from_numpy(noise)).last_hidden_state.numpy()
  ours_latent = jax.jit(lambda p: mae.MAE(config).apply(
      {"params": p}, images, noise=noise, method="encode_masked"))(params)[0]
  assert float(np.abs(np.asarray(ours_latent) - latent).max()) < TOLERANCE


def test_old_transformers_key_names_and_scanned_layers_import_the_same(hf_mae):
  from genvis.convert import hf_mae as convert  # pylint: disable=import-outside-toplevel
  hf_mae.config.norm_pix_loss = False
  state = {k: v.numpy() for k, v in hf_mae.state_dict().items()}
  renames = {".attention.q_proj.": ".attention.attention.query.",
             ".attention.k_proj.": ".attention.attention.key.",
             ".attention.v_proj.": ".attention.attention.value.",
             ".attention.o_proj.": ".attention.output.dense.",
             ".mlp.fc1.": ".intermediate.dense.", ".mlp.fc2.": ".output.dense.",
             "vit.layers.": "vit.encoder.layer."}
  old = {}
  for key, value in state.items():
    for new_name, old_name in renames.items():
      key = key.replace(new_name, old_name)
    old[key] = value
  assert "vit.encoder.layer.1.attention.attention.query.weight" in old
  _, params = convert.from_hf(state, hf_mae.config)
  _, old_params = convert.from_hf(old, hf_mae.config)
  chex.assert_trees_all_equal(params, old_params)
  fields, scanned = convert.from_hf(old, hf_mae.config, scan_layers=True)
  assert scanned["vit"]["encoder"]["blocks"]["layers"]["ln_1"]["scale"].shape == (2, 32)
  images, noise = random_images(), random_noise()
  loss = lambda cfg, p: float(jax.jit(lambda p: mae.MAE(cfg).apply(
      {"params": p}, images, noise=noise)["loss"])(p))
  looped = mae.MAEConfig(**{**fields, "scan_layers": False})
  np.testing.assert_allclose(loss(mae.MAEConfig(**fields), scanned), loss(looped, params),
                             rtol=1e-5)


def test_bad_checkpoints_are_one_line_user_errors(hf_mae):
  from genvis.convert import hf_mae as convert  # pylint: disable=import-outside-toplevel
  state = {k: v.numpy() for k, v in hf_mae.state_dict().items()}
  cases = {
      "missing": ({k: v for k, v in state.items()
                   if k != "decoder.decoder_layers.0.mlp.fc1.weight"},
                  r"missing key 'decoder.decoder_layers.0.mlp.fc1.weight' \(shape \(32, 16\)\)"),
      "shape": ({**state, "vit.layers.1.attention.o_proj.weight": np.zeros((32, 31))},
                r"'vit.layers.1.attention.o_proj.weight' has shape \(32, 31\), expected "
                r"\(32, 32\)"),
      "extra": ({**state, "decoder.extra.weight": np.zeros(3)},
                r"unexpected key 'decoder.extra.weight' of shape \(3,\)"),
      "zero table": ({**state, "decoder.decoder_pos_embed": np.zeros((1, 17, 16))},
                     r"'decoder.decoder_pos_embed' is not MAE's fixed .*all zeros"),
  }
  for name, (bad, message) in cases.items():
    with pytest.raises(UserError, match=message) as error:
      convert.from_hf(bad, hf_mae.config)
    assert "\n" not in str(error.value), name
  with pytest.raises(UserError, match="model.image_size comes from config.json"):
    convert.from_hf(state, hf_mae.config, image_size=32)


def test_imported_vit_model_matches_hugging_face():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from genvis.convert import hf_mae as convert  # pylint: disable=import-outside-toplevel
  torch.manual_seed(1)
  hf_model = transformers.ViTModel(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
      image_size=16, patch_size=4, num_channels=3)).eval()
  with torch.no_grad():
    for parameter in hf_model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
    out = hf_model(pixel_values=torch.from_numpy(random_images().transpose(0, 3, 1, 2).copy()))
  fields, params = convert.from_hf(hf_model.state_dict(), hf_model.config)
  config = vit.ViTConfig(**fields)
  assert (config.pos_embedding, config.representation_size, config.num_classes) == (
      "learned", 32, 0)
  model = vit.ViT(config)
  tokens = jax.jit(lambda p: model.apply({"params": p}, random_images(),
                                         method="encode_images"))(params)
  pooled = jax.jit(lambda p: model.apply({"params": p}, random_images()))(params)
  token_diff = float(np.abs(np.asarray(tokens) - out.last_hidden_state.numpy()).max())
  pooled_diff = float(np.abs(np.asarray(pooled) - out.pooler_output.numpy()).max())
  print(f"ViTModel: max |last_hidden_state diff| = {token_diff:.2e}, max |pooler diff| = "
        f"{pooled_diff:.2e}")
  assert token_diff < TOLERANCE and pooled_diff < TOLERANCE
  assert np.abs(out.last_hidden_state.numpy()).max() > 0.5

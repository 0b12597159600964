"""ViT, patches and 2-D sin-cos embeddings: shapes, invariants, published parameter counts."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.errors import UserError
from genvis.models import vit
from genvis.nn.embeddings import sincos_2d
from genvis.nn.patches import grid_size, patchify, unpatchify

# 8x8 RGB images in 4x4 patches: 4 patch tokens plus the class token.
SMALL = dict(image_size=8, patch_size=4, channels=3, d_model=16, num_layers=2, num_heads=2,
             num_classes=10)


def make(random_head=True, **overrides):
  config = vit.ViTConfig(**vit.config_for("Ti/4", **{**SMALL, **overrides}))
  model = vit.ViT(config)
  images = jnp.zeros((1, config.image_size, config.image_size, config.channels))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), images)["params"])
  if random_head and "head" in params:  # nonzero, so the logits depend on the inputs
    params["head"]["kernel"] = jax.random.normal(jax.random.key(1),
                                                 params["head"]["kernel"].shape)
  return model, params


def run(model, params, *args, method="__call__", **kwargs):
  """model.apply, compiled (eager Linen calls dispatch op by op and are slow)."""
  fn = lambda p, *a: model.apply({"params": p}, *a, method=method, **kwargs)
  return jax.jit(fn)(params, *args)


def random_images(batch=2, size=8, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(batch, size, size, 3)),
                     jnp.float32)


@pytest.fixture(scope="module")
def small_model_at_init():
  return make(random_head=False)


@pytest.fixture(scope="module")
def small_model(small_model_at_init):
  model, params = small_model_at_init
  head = {**params["head"], "kernel": jax.random.normal(jax.random.key(1),
                                                        params["head"]["kernel"].shape)}
  return model, {**params, "head": head}


def test_patchify_is_row_major_with_pixels_in_py_px_c_order_and_inverts():
  images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  patches = np.asarray(patchify(images, 4))
  chex.assert_shape(patches, (2, 6, 48))
  for k in range(6):  # patch k: grid row k // 3, column k % 3
    row, col = divmod(k, 3)
    block = images[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4, :]
    np.testing.assert_array_equal(patches[:, k], block.reshape(2, -1))
  np.testing.assert_array_equal(unpatchify(patches, 4, 8, 12), images)


def test_patchify_matches_hugging_face_vitmae():
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config = transformers.ViTMAEConfig(
      hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
      image_size=8, patch_size=4, num_channels=3, decoder_hidden_size=8,
      decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=16)
  with torch.device("meta"):  # patchify reads only the config
    mae = transformers.ViTMAEForPreTraining(config)
  images = np.array(random_images())  # a writable copy, which torch.from_numpy wants
  theirs = mae.patchify(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
  np.testing.assert_array_equal(theirs.numpy(), np.asarray(patchify(images, 4)))


def test_patches_that_do_not_tile_the_image_are_a_user_error():
  with pytest.raises(UserError, match=r"config.model.image_size=30 is not divisible by "
                                      r"config.model.patch_size=16"):
    vit.ViTConfig(**vit.config_for("B/16", image_size=30))
  with pytest.raises(UserError, match="image_size=30 is not divisible"):
    grid_size(30, 16)
  assert grid_size(32, 16) == 2
  with pytest.raises(UserError, match=r"\(2, 9, 8, 3\).*patch_size=4"):
    patchify(jnp.zeros((2, 9, 8, 3)), 4)
  with pytest.raises(UserError, match="do not form a 8x8 image"):
    unpatchify(jnp.zeros((2, 3, 48)), 4, 8, 8)


def test_sincos_2d_follows_the_mae_formula():
  grid_h, grid_w, dim = 2, 3, 8
  table = sincos_2d(grid_h, grid_w, dim, cls_token=True)
  chex.assert_shape(table, (1 + 6, 8))
  np.testing.assert_array_equal(table[0], 0.0)  # the class token's row
  quarter = dim // 4
  for k in range(grid_h * grid_w):
    row, col = divmod(k, grid_w)
    expected = []
    for pos in (col, row):  # MAE: the column in the first half, the row in the second
      omegas = [1.0 / 10000 ** (2 * i / (dim / 2)) for i in range(quarter)]
      expected += [np.sin(pos * w) for w in omegas] + [np.cos(pos * w) for w in omegas]
    np.testing.assert_allclose(table[1 + k], expected, rtol=1e-6, atol=1e-7)
  with pytest.raises(UserError, match="config.model.d_model=18.*divisible by 4"):
    sincos_2d(2, 2, 18)


def test_sincos_2d_matches_hugging_face_vitmae():
  pytest.importorskip("torch")
  vit_mae = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")
  ours = sincos_2d(3, 5, 16, cls_token=True)
  if hasattr(vit_mae, "get_2d_sincos_pos_embed"):  # transformers 4.x: MAE's own code
    np.testing.assert_allclose(vit_mae.get_2d_sincos_pos_embed(16, 4, add_cls_token=True),
                               sincos_2d(4, 4, 16, cls_token=True), atol=1e-6)
  elif hasattr(vit_mae, "build_2d_sinusoidal_position_embedding"):
    # transformers 5.x puts the row first: the same vectors with the halves swapped.
    theirs = vit_mae.build_2d_sinusoidal_position_embedding(3, 5, 16, cls_token=True).numpy()
    np.testing.assert_allclose(np.concatenate([theirs[:, 8:], theirs[:, :8]], axis=1), ours,
                               atol=1e-6)
    assert np.abs(theirs - ours).max() > 0.1  # and the halves do differ
  else:
    pytest.skip("no 2-D sin-cos function in this transformers")


def test_output_shapes_and_dtypes(small_model):
  model, params = small_model
  images = random_images()
  logits, features = run(model, params, images, return_features=True)
  chex.assert_shape(logits, (2, 10))
  chex.assert_type(logits, jnp.float32)
  chex.assert_shape(features, (2, 16))
  chex.assert_tree_all_finite(logits)
  chex.assert_shape(run(model, params, images, method="encode_images"), (2, 5, 16))
  headless, headless_params = make(num_classes=0, pooling="mean", class_token=False)
  assert "head" not in headless_params and "cls_token" not in headless_params
  chex.assert_shape(headless_params["pos_embedding"], (4, 16))
  chex.assert_shape(run(headless, headless_params, images), (2, 16))


def test_head_is_zero_initialised_so_classes_start_equally_likely(small_model_at_init):
  model, params = small_model_at_init
  assert not np.any(params["head"]["kernel"]) and not np.any(params["head"]["bias"])
  assert abs(float(jnp.std(params["pos_embedding"])) - 0.02) < 0.01
  np.testing.assert_array_equal(run(model, params, random_images()), 0.0)


def test_attention_is_bidirectional(small_model):
  model, params = small_model
  images = np.asarray(random_images())
  changed = images.copy()
  changed[:, 4:, 4:] += 1.0  # only the last patch
  base = run(model, params, jnp.asarray(images), method="encode_images")
  other = run(model, params, jnp.asarray(changed), method="encode_images")
  # The first patch's token (index 1, after the class token) sees the later patch.
  assert np.abs(np.asarray(base[:, 1]) - np.asarray(other[:, 1])).max() > 1e-3


def test_encoder_runs_on_a_subset_of_patch_tokens(small_model):
  model, params = small_model
  images = random_images()

  def encode_subset(p, x, keep):
    embed = lambda m, x: m.prepend_class_token(m.embed_patches(x)[:, keep])
    tokens = model.apply({"params": p}, x, method=embed)
    return model.apply({"params": p}, tokens, method="encode")

  subset = jax.jit(encode_subset)(params, images, jnp.array([3, 1]))
  chex.assert_shape(subset, (2, 3, 16))
  everything = jax.jit(encode_subset)(params, images, jnp.arange(4))
  np.testing.assert_allclose(everything, run(model, params, images, method="encode_images"),
                             rtol=1e-5, atol=1e-5)
  pooled = model.apply({"params": params}, subset, method="pool")
  np.testing.assert_array_equal(pooled, subset[:, 0])  # "cls" pooling


def test_patch_embedding_is_the_strided_convolution(small_model):
  model, params = small_model
  images = random_images()
  kernel = params["patch_embed"]["kernel"].reshape(4, 4, 3, 16)  # (py, px, c) -> HWIO
  conv = jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = (conv.reshape(2, 4, 16) + params["patch_embed"]["bias"]
              + params["pos_embedding"][1:])
  np.testing.assert_allclose(run(model, params, images, method="embed_patches"), expected,
                             rtol=1e-5, atol=1e-5)


def test_sincos_positions_are_a_constant_not_a_parameter():
  model, params = make(pos_embedding="sincos", pooling="mean")
  assert "pos_embedding" not in params
  zeros = jnp.zeros((1, 8, 8, 3))
  embedded = run(model, params, zeros, method="embed_patches")
  np.testing.assert_allclose(embedded[0] - params["patch_embed"]["bias"],
                             sincos_2d(2, 2, 16), rtol=1e-6, atol=1e-6)


def test_config_errors_name_the_key():
  with pytest.raises(UserError, match="unknown ViT variant 'X/16'"):
    vit.config_for("X/16")
  with pytest.raises(UserError, match="unknown ViT variant 'B16'"):
    vit.config_for("B16")
  assert vit.config_for("vit-L/14")["patch_size"] == 14
  with pytest.raises(UserError, match="config.model.causal=True"):
    vit.ViTConfig(**vit.config_for("Ti/4", **SMALL, causal=True))
  with pytest.raises(UserError, match="pooling='cls' needs config.model.class_token"):
    vit.ViTConfig(**vit.config_for("Ti/4", **SMALL, class_token=False))
  with pytest.raises(UserError, match="config.model.d_model=18"):
    vit.ViTConfig(**vit.config_for("Ti/4", **{**SMALL, "d_model": 18, "num_heads": 2},
                                   pos_embedding="sincos"))


def test_images_of_the_wrong_shape_are_a_user_error(small_model):
  model, params = small_model
  with pytest.raises(UserError, match=r"\(2, 16, 16, 3\).*config.model.image_size"):
    model.apply({"params": params}, jnp.zeros((2, 16, 16, 3)))


# timm's exact counts (vit_*_224, 1000 classes), which are the ViT paper's 86M / 307M / 632M
# (L/16 is 304.3M; the paper prints 307M) and DeiT's 5.7M / 22M.
EXACT_COUNTS = {"Ti/16": 5_717_416, "S/16": 22_050_664, "B/16": 86_567_656,
                "L/16": 304_326_632, "H/14": 632_045_800}
PAPER_COUNTS = {"Ti/16": 5.7e6, "S/16": 22e6, "B/16": 86e6, "L/16": 307e6, "H/14": 632e6}


@pytest.mark.parametrize("variant", sorted(EXACT_COUNTS))
def test_parameter_counts_match_timm_hugging_face_and_the_papers(variant):
  config = vit.ViTConfig(**vit.config_for(variant, num_classes=1000))
  count = vit.count_params(vit.abstract_params(config))
  assert count == EXACT_COUNTS[variant]
  assert abs(count - PAPER_COUNTS[variant]) / PAPER_COUNTS[variant] < 0.01
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  hf_config = transformers.ViTConfig(
      hidden_size=config.d_model, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, intermediate_size=config.hidden_dim,
      image_size=config.image_size, patch_size=config.patch_size, num_labels=1000)
  with torch.device("meta"):  # shapes only, no memory; this class has no pooler
    hf_model = transformers.ViTForImageClassification(hf_config)
  assert count == sum(p.numel() for p in hf_model.parameters())


def test_representation_layer_is_hugging_faces_pooler():
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  config = vit.ViTConfig(**vit.config_for("Ti/16", representation_size=192))
  hf_config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=12,
                                     num_attention_heads=3, intermediate_size=768)
  with torch.device("meta"):
    hf_model = transformers.ViTModel(hf_config, add_pooling_layer=True)
  assert vit.count_params(vit.abstract_params(config)) == sum(
      p.numel() for p in hf_model.parameters())


# DeiT (Touvron et al. 2021), table 1: GFLOPs (multiply-adds) of a forward pass at 224 px.
DEIT_GFLOPS = {"Ti/16": 1.3, "S/16": 4.6, "B/16": 17.6}


@pytest.mark.parametrize("variant", sorted(DEIT_GFLOPS))
def test_flops_per_image_match_deit_at_the_printed_precision(variant):
  config = vit.ViTConfig(**vit.config_for(variant, num_classes=1000))
  forward_macs = vit.flops_per_image(config) / 6  # 3 passes, 2 FLOPs per multiply-add
  assert abs(forward_macs / 1e9 - DEIT_GFLOPS[variant]) < 0.05


def test_scan_and_remat_give_the_same_function_as_the_loop(small_model):
  model, params = small_model
  scanned_model, _ = make(scan_layers=True, remat="full")
  blocks = params["encoder"]["blocks"]
  layers = [blocks[f"layer_{i}"] for i in range(2)]
  scanned = {**params, "encoder": {**params["encoder"], "blocks": {
      "layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)}}}
  images = random_images()
  np.testing.assert_allclose(run(model, params, images), run(scanned_model, scanned, images),
                             rtol=1e-5, atol=1e-5)


def test_dropout_is_seeded_in_training_and_off_in_evaluation():
  model, params = make(dropout=0.1, attention_dropout=0.1)
  images = random_images()
  train = jax.jit(lambda seed: model.apply({"params": params}, images, train=True,
                                           rngs={"dropout": jax.random.key(seed)}))
  np.testing.assert_array_equal(train(0), train(0))
  assert np.abs(np.asarray(train(0)) - np.asarray(train(1))).max() > 1e-4
  evaluate = jax.jit(lambda p: model.apply({"params": p}, images))
  np.testing.assert_array_equal(evaluate(params), evaluate(params))

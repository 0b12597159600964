"""Hugging Face GPT-2 / GPT-1 / ImageGPT import and export: logits parity with transformers'
PyTorch models built from small configs (nothing is downloaded), exact round trips, one-line
errors, and the CLI that turns a saved HF directory into a genvis workdir."""

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import types

from flax import traverse_util
import jax
import numpy as np
import pytest

from conftest import REPO
from genvis import config_lib
from genvis.convert import hf_gpt
from genvis.errors import UserError
from genvis.models import gpt
from genvis.train.trainer import Trainer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # max |logit difference|, float32
VOCAB = 97
HF_SIZES = dict(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=VOCAB,
                bos_token_id=None, eos_token_id=None)
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 20)).astype(np.int32)
HF_CLASSES = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config"),
    "gpt1": ("OpenAIGPTLMHeadModel", "OpenAIGPTConfig"),
    "imagegpt": ("ImageGPTForCausalImageModeling", "ImageGPTConfig"),
}


def hf_class(family):
  return getattr(transformers, HF_CLASSES[family][0])


def hf_model(family, **config):
  model_name, config_name = HF_CLASSES[family]
  torch.manual_seed(0)
  hf_config = getattr(transformers, config_name)(**{**HF_SIZES, **config})
  model = getattr(transformers, model_name)(hf_config).eval()
  # HF starts LayerNorms at 1 and biases at 0, so a mix-up among them would go unseen: every
  # parameter gets noise.
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
  return model


def hf_logits(model, tokens=TOKENS):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.numpy()


def numpy_state(model):
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def imported_twin(model):
  """The HF model, its import, a compiled genvis forward and the reference logits."""
  fields, params = hf_gpt.from_hf(model.state_dict(), model.config)
  config = gpt.GPTConfig(**fields)
  apply = jax.jit(gpt.GPT(config).apply)
  return types.SimpleNamespace(
      model=model, config=config, fields=fields, params=params,
      logits=lambda p, cfg=None: np.asarray(
          (apply if cfg is None else jax.jit(gpt.GPT(cfg).apply))({"params": p}, TOKENS)),
      reference=hf_logits(model))


@pytest.fixture(scope="module")
def gpt2():
  return imported_twin(hf_model("gpt2"))


@pytest.fixture(scope="module")
def gpt1():
  return imported_twin(hf_model("gpt1"))


@pytest.fixture(scope="module")
def imagegpt():
  return imported_twin(hf_model("imagegpt"))


@pytest.fixture(params=["gpt2", "gpt1", "imagegpt"])
def twin(request):
  return request.getfixturevalue(request.param)


# ------------------------------------------------------------------------------ import
def test_imported_model_matches_hugging_face_logits(twin):
  diff = max_diff(twin.logits(twin.params), twin.reference)
  print(f"{twin.model.__class__.__name__}: max |logit diff| = {diff:.2e}")
  assert diff < TOLERANCE
  assert np.abs(twin.reference).max() > 1.0  # the logits are not trivially small


def test_imported_config_follows_the_family(gpt2, gpt1):
  assert (gpt2.config.norm_position, gpt2.config.final_norm) == ("pre", True)
  assert (gpt1.config.norm_position, gpt1.config.final_norm) == ("post", False)
  # HF's OpenAIGPT computes afn="gelu" with the tanh approximation (its `gelu_new`).
  assert gpt1.config.activation == gpt2.config.activation == "gelu_tanh"
  assert (gpt2.config.num_layers, gpt2.config.d_model, gpt2.config.max_len) == (2, 32, 32)
  # Exactly the tree, shapes and dtypes that GPT(config).init produces.
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(gpt2.params) == shapes(gpt.abstract_params(gpt2.config))


def test_imagegpt_imports_as_gain_only_norm_sigmoid_gelu_and_a_head_without_start_token(
    imagegpt):
  config = imagegpt.config
  assert (config.norm, config.activation, config.tie_embeddings) == ("rms", "quick_gelu", False)
  # The last input id is ImageGPT's start-of-image token, which the head never predicts.
  assert (config.vocab_size, config.num_outputs) == (VOCAB, VOCAB - 1)
  assert imagegpt.reference.shape[-1] == VOCAB - 1
  assert "bias" not in imagegpt.params["blocks"]["layer_0"]["ln_1"]
  # LayerNorm in place of the gain-only RMS norm changes the logits.
  layer_norm = dataclasses.replace(config, norm="layer", use_bias=False)
  assert max_diff(imagegpt.logits(imagegpt.params, layer_norm), imagegpt.reference) > TOLERANCE


def test_a_perturbed_weight_breaks_parity(twin):
  state = numpy_state(twin.model)
  state["transformer.h.1.ln_2.weight"] += 0.01
  _, params = hf_gpt.from_hf(state, twin.model.config)
  assert max_diff(twin.logits(params), twin.reference) > TOLERANCE


def test_gpt1_with_exact_gelu_misses_parity(gpt1):
  exact = dataclasses.replace(gpt1.config, activation="gelu")
  assert max_diff(gpt1.logits(gpt1.params, exact), gpt1.reference) > TOLERANCE


def test_gpt2_exact_gelu_untied_head_and_mlp_width():
  twin = imported_twin(hf_model("gpt2", activation_function="gelu", tie_word_embeddings=False,
                                n_inner=48))
  assert (twin.config.activation, twin.config.tie_embeddings, twin.config.mlp_dim) == (
      "gelu", False, 48)
  assert twin.params["head"]["kernel"].shape == (32, VOCAB)
  diff = max_diff(twin.logits(twin.params), twin.reference)
  print(f"GPT-2 (exact gelu, untied, n_inner=48): max |logit diff| = {diff:.2e}")
  assert diff < TOLERANCE


def test_directories_with_safetensors_or_torch_bin_without_prefix(gpt1, tmp_path):
  saved = tmp_path / "safetensors"
  gpt1.model.save_pretrained(saved)
  _, from_safetensors = hf_gpt.load_hf_dir(str(saved))
  # pytorch_model.bin, names without "transformer.", plus a causal-mask buffer as older
  # checkpoints carry: the buffer is skipped, the rest imports the same.
  legacy = tmp_path / "torch_bin"
  legacy.mkdir()
  gpt1.model.config.to_json_file(str(legacy / "config.json"))
  state = {k.removeprefix("transformer."): v for k, v in gpt1.model.state_dict().items()}
  state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
  torch.save(state, legacy / "pytorch_model.bin")
  _, from_torch = hf_gpt.load_hf_dir(str(legacy))
  for params in (from_safetensors, from_torch):
    jax.tree.map(np.testing.assert_array_equal, params, gpt1.params)


# ------------------------------------------------------------------------------ export
def genvis_params(config, seed=1):
  """Random genvis parameters in GPT(config).init's tree: LayerNorm scales near 1, the rest
  (biases included, which init would zero) normal with std 0.1. No compile needed."""
  rng = np.random.default_rng(seed)
  def draw(path, spec):
    noise = 0.1 * rng.standard_normal(spec.shape).astype(np.float32)
    return noise + 1.0 if path[-1].key == "scale" else noise
  return jax.tree_util.tree_map_with_path(draw, gpt.abstract_params(config))


EXPORTS = {
    "gpt2": ("gpt2", {}),
    "gpt1-scanned": ("gpt1", {"scan_layers": True}),
    "gpt2-no-bias-untied": ("gpt2", {"use_bias": False, "tie_embeddings": False}),
    "imagegpt-scanned": ("imagegpt", {"scan_layers": True}),
}
GENVIS_VARIANTS = {"gpt2": "gpt2", "gpt1": "gpt1", "imagegpt": "igpt-s"}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_export_loads_in_transformers_and_imports_back_exactly(name, tmp_path):
  family, extra = EXPORTS[name]
  if family == "imagegpt":
    extra = {**extra, "output_vocab_size": VOCAB - 1}
  config = gpt.GPTConfig(**gpt.config_for(GENVIS_VARIANTS[family], vocab_size=VOCAB, max_len=32,
                                          num_layers=2, d_model=32, num_heads=4, **extra))
  params = genvis_params(config)
  hf_gpt.save_hf_dir(params, config, str(tmp_path))
  model = hf_class(family).from_pretrained(str(tmp_path)).eval()
  ours = jax.jit(gpt.GPT(config).apply)({"params": params}, TOKENS)
  diff = max_diff(ours, hf_logits(model))
  print(f"export {name}: max |logit diff| = {diff:.2e}")
  assert diff < TOLERANCE

  fields, imported = hf_gpt.load_hf_dir(str(tmp_path), scan_layers=config.scan_layers)
  if config.use_bias:
    assert gpt.GPTConfig(**fields) == config
    jax.tree.map(np.testing.assert_array_equal, imported, params)
  else:  # HF always has biases: they come back as zeros
    assert fields["use_bias"] and not np.any(imported["blocks"]["layer_0"]["mlp"]["fc"]["bias"])


# ------------------------------------------------------------------------------ errors
def test_missing_key_is_named(gpt2):
  state = numpy_state(gpt2.model)
  del state["transformer.h.1.mlp.c_fc.bias"]
  with pytest.raises(UserError, match=r"missing key 'transformer\.h\.1\.mlp\.c_fc\.bias'"):
    hf_gpt.from_hf(state, gpt2.model.config)


def test_wrong_shape_is_named_with_both_shapes(gpt2):
  state = numpy_state(gpt2.model)
  state["transformer.wpe.weight"] = np.zeros((16, 32), np.float32)
  with pytest.raises(UserError, match=r"'transformer\.wpe\.weight' has shape \(16, 32\), "
                     r"expected \(32, 32\)"):
    hf_gpt.from_hf(state, gpt2.model.config)


def test_unexpected_key_and_unsupported_option_are_named(gpt2):
  state = numpy_state(gpt2.model)
  state["transformer.h.2.ln_1.weight"] = np.ones(32, np.float32)
  with pytest.raises(UserError, match=r"unexpected key 'transformer\.h\.2\.ln_1\.weight'"):
    hf_gpt.from_hf(state, gpt2.model.config)
  hf_config = {**gpt2.model.config.to_dict(), "scale_attn_by_inverse_layer_idx": True}
  with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx"):
    hf_gpt.from_hf(numpy_state(gpt2.model), hf_config)
  with pytest.raises(UserError, match="model.n_layer comes from config.json"):
    hf_gpt.from_hf(numpy_state(gpt2.model), gpt2.model.config, n_layer=3)


@pytest.mark.parametrize("variant, changes, message", [
    ("gpt2", {"head_dim": 4}, r"num_heads=4 x head_dim=4 != d_model=32"),
    ("gpt1", {"activation": "gelu"}, r"model.activation='gelu'"),
    ("gpt2", {"norm_position": "post"}, r"norm_position='post'"),
])
def test_export_of_what_hugging_face_cannot_express_is_refused(variant, changes, message):
  config = gpt.GPTConfig(**gpt.config_for(variant, vocab_size=VOCAB, max_len=32, num_layers=1,
                                          d_model=32, num_heads=4, **changes))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), gpt.abstract_params(config))
  with pytest.raises(UserError, match=message):
    hf_gpt.to_hf(params, config, family="gpt2" if "norm_position" in changes else None)


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def hf_dir_with_tokenizer(tmp_path_factory):
  """A saved GPT-2 directory with a byte-level BPE tokenizer.json of <= 300 tokens."""
  from genvis.data import text_sources, tokenizers  # pylint: disable=import-outside-toplevel
  directory = tmp_path_factory.mktemp("hf_gpt2")
  model = hf_model("gpt2", vocab_size=300)
  model.save_pretrained(directory)
  tokenizer = tokenizers.BPETokenizer.fit(text_sources.embedded_corpus()[:20_000], 300)
  tokenizer.save(str(directory / "tokenizer.json"))
  return directory, model


@pytest.mark.slow
def test_cli_workdir_samples_matches_hugging_face_and_starts_fine_tuning(
    hf_dir_with_tokenizer, tmp_path):
  from genvis import main as genvis_main  # pylint: disable=import-outside-toplevel
  from genvis.train.pretrained import load_trained  # pylint: disable=import-outside-toplevel
  hf_dir, model = hf_dir_with_tokenizer
  workdir = str(tmp_path / "imported")
  result = subprocess.run(
      [sys.executable, "-m", "genvis.convert.hf_gpt", f"--hf_dir={hf_dir}",
       f"--workdir={workdir}", "--set", "data.batch_size=8", "--set", "sample.num_samples=1",
       "--set", "sample.max_new_tokens=4"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]

  trainer, params = load_trained(workdir)
  tokens = np.random.default_rng(1).integers(0, 300, size=(2, 20)).astype(np.int32)
  logits = trainer.task.model.apply({"params": params}, tokens)
  diff = max_diff(logits, hf_logits(model, tokens))
  print(f"CLI import: max |logit diff| = {diff:.2e}")
  assert diff < TOLERANCE
  assert trainer.task.tokenizer.vocab_size <= 300

  # The printed `genvis.main --mode=sample` command rebuilds the workdir's config and samples.
  command = shlex.split(result.stdout.strip().splitlines()[-1])
  spec = next(a for a in command if a.startswith("--config=")).partition("=")[2]
  overrides = config_lib.parse_overrides(
      a.removeprefix("--config.") for a in command if a.startswith("--config."))
  config = config_lib.load_config(spec, overrides)
  assert config.model.to_dict() == trainer.config.model.to_dict()
  assert genvis_main.run(config, workdir, "sample") == {"step": 0}

  # GPT-1-style fine-tuning starts from the imported workdir: its weights exactly, a new
  # classifier head, and the checkpoint's BPE tokenizer copied along.
  size = re.search(r"size=(\w+)", spec).group(1)
  sft = config_lib.load_config(
      os.path.join(REPO, f"configs/gpt_sft.py:size={size},tok=bpe"),
      {**{k: v for k, v in overrides.items() if k.startswith("model.")},
       "init_from": workdir, "data.batch_size": 8, "sample.num_samples": 0})
  sft_trainer = Trainer(sft, str(tmp_path / "sft"))
  imported = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tuned = traverse_util.flatten_dict(jax.device_get(sft_trainer.restore_or_init().params),
                                     sep="/")
  assert set(tuned) - set(imported) == {"cls_head/kernel", "cls_head/bias"}
  for name, value in imported.items():
    np.testing.assert_array_equal(tuned[name], value, err_msg=name)
  assert sft_trainer.task.tokenizer.vocab_size == trainer.task.tokenizer.vocab_size


def test_cli_without_a_tokenizer_is_one_line(gpt2, tmp_path, capsys):
  gpt2.model.save_pretrained(tmp_path / "hf")
  capsys.readouterr()  # transformers' progress bar
  code = hf_gpt.main([f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'w'}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and "--tokenizer" in err
  assert not (tmp_path / "w").exists()


def test_cli_refuses_imagegpt_which_needs_a_palette_not_a_tokenizer(imagegpt, tmp_path,
                                                                    capsys):
  imagegpt.model.save_pretrained(tmp_path / "hf")
  capsys.readouterr()
  code = hf_gpt.main([f"--hf_dir={tmp_path / 'hf'}", f"--workdir={tmp_path / 'w'}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and "\n" not in err and "load_hf_dir" in err
  # Without tie_word_embeddings in config.json, ImageGPT's untied head is still assumed.
  config = imagegpt.model.config.to_dict()
  del config["tie_word_embeddings"]
  fields, _ = hf_gpt.from_hf(imagegpt.model.state_dict(), config)
  assert not fields["tie_embeddings"]


def test_cli_refuses_an_existing_run(hf_dir_with_tokenizer, tmp_path, capsys):
  hf_dir, _ = hf_dir_with_tokenizer
  (tmp_path / "config.json").write_text("{}")
  code = hf_gpt.main([f"--hf_dir={hf_dir}", f"--workdir={tmp_path}"])
  assert code == 2 and "already holds a genvis run" in capsys.readouterr().err

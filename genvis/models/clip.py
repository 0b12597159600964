"""CLIP: Learning Transferable Visual Models From Natural Language Supervision (Radford et
al. 2021), with SigLIP's sigmoid-loss parameters as an option.

    images [B, S, S, C] -> ViT (class token, learned positions, CLIP's extra LayerNorm before
                           the blocks, pre-LN blocks, final LayerNorm on the class token)
                        -> Dense (no bias) to embed_dim -> L2-normalise      = image_embeds
    tokens [B', T]      -> token + learned position embeddings -> causal pre-LN blocks
                           (GPT-2 style) -> final LayerNorm -> the state at the EOT token
                        -> Dense (no bias) to embed_dim -> L2-normalise      = text_embeds
    logits_per_image    =  t * image_embeds @ text_embeds.T  [B, B']  (+ b for SigLIP)

Temperature: a learnable log-scale t' ("log_scale"), initialised at log(1 / 0.07) and used as
t = min(exp(t'), 100), CLIP's clip (genvis/nn/contrastive.py). With `loss="siglip"` t' starts
at log 10, t = exp(t') is not clipped, and a learnable bias b ("logit_bias") starts at -10.
Both scalars are float32 whatever `param_dtype` says: bfloat16 would round t' = 2.659 to 2.656.
The model returns the scale and the logits; the loss (genvis/nn/contrastive.py) belongs to
the task.

EOT pooling: the text embedding is the final state at the end-of-text token, the only causal
position that has read the whole caption. OpenAI's CLIP takes argmax(token ids), because its
EOT (49407) is the largest id. A BPE tokenizer trained on captions need not give EOT the
largest id (genvis.data.caption_tokens gives it id 2), so genvis pools at the *first*
occurrence of `eot_token_id` (padding with the EOT id is then harmless), or at the
last position of a row without one (a caption cut at max_len). `eot_token_id=-1` selects
OpenAI's argmax rule. Hugging Face parity: transformers' CLIPTextModel uses argmax when its
config has the legacy eos_token_id == 2 (`eot_token_id=-1` here) and the first occurrence of
eos_token_id otherwise (the same id here); they differ only on rows without an EOT, where HF
reads position 0. Callers that know each caption's length may pass `eot_positions` instead.

Config: flat, as config.model is everywhere in genvis (nested dataclasses are awkward in
ml_collections). The image tower's fields are `image_size`, `patch_size`, `channels` and
`vision_{d_model, layers, heads, mlp_dim}`; the text tower's `vocab_size`, `max_len`,
`eot_token_id` and `text_{d_model, layers, heads, mlp_dim}`; the block options (activation,
epsilon, dropout, scan, remat, dtypes, ...) are shared. `vision_config()` and `text_config()`
give each tower's own config. OpenAI's towers use the sigmoid GELU ("quick_gelu") and
LayerNorm epsilon 1e-5. Initialisation: each tower's blocks and text embeddings from
normal(init_std) with genvis's 1/sqrt(2L) on the residual projections, where init_std = 0
(the default) means width^-1/2 per tower, the scale of OpenAI's blocks (OpenAI starts the
token and position tables smaller, at 0.02 and 0.01); the projections from normal(width^-1/2)
as OpenAI's. GPT's 0.02 is too small here: a 128-wide image tower then maps every image to
the same embedding (cosine 0.999997 between images at init). The softmax loss, blind to a
shared offset, still learns from the tiny differences; the sigmoid loss first pulls all pairs
together and stays at that constant solution (SigLIP at chance after 700 steps on the scenes;
at width^-1/2, 18 % in-batch accuracy after 250).

Parameters: vision/ (exactly a `vit.ViT(config.vision_config())` tree: patch_embed/kernel,
cls_token, pos_embedding, encoder/{ln_pre, blocks, ln_f}), text/{wte/embedding [V, D],
wpe [max_len, D], blocks, ln_f} (GPT's names), image_projection/kernel [Dv, E],
text_projection/kernel [Dt, E], log_scale [], logit_bias [] (SigLIP only).
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.models import vit
from genvis.models.gpt import count_params  # noqa: F401  (re-exported: same for every model)
from genvis.nn import contrastive
from genvis.nn import partitioning as P
from genvis.nn.dropout import Dropout
from genvis.nn.token_embedding import TokenEmbed
from genvis.nn.transformer import TransformerConfig, TransformerStack, norm_layer

# Fields of TransformerConfig that both towers share (the rest are per tower or fixed).
_SHARED_BLOCK_FIELDS = ("activation", "layer_norm_epsilon", "dropout", "attention_dropout",
                        "use_bias", "init_std", "attention_impl", "scan_layers", "remat",
                        "dtype", "param_dtype")
ARGMAX_EOT = -1  # eot_token_id: pool at argmax(token ids), OpenAI's rule


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextConfig(TransformerConfig):
  """The text tower: a causal transformer over `vocab_size` tokens, at most `max_len`."""

  vocab_size: int
  max_len: int = 77
  eot_token_id: int = ARGMAX_EOT


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPConfig:
  """Both towers, flat; the defaults are OpenAI's ViT-B/32."""

  embed_dim: int = 512  # width of the joint embedding space
  loss: str = "clip"  # "clip" (softmax, clipped temperature) or "siglip" (sigmoid + bias)
  # Image tower.
  image_size: int = 224
  patch_size: int = 32
  channels: int = 3
  vision_d_model: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 0  # 0: 4 * vision_d_model
  # Text tower.
  vocab_size: int = 49408  # rows of the token embedding; a fitted tokenizer's budget
  max_len: int = 77  # context length (learned position embeddings)
  eot_token_id: int = 49407  # pool at its first occurrence; -1: at argmax(token ids)
  text_d_model: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 0  # 0: 4 * text_d_model
  # Block options of both towers.
  activation: str = "quick_gelu"
  layer_norm_epsilon: float = 1e-5
  dropout: float = 0.0
  attention_dropout: float = 0.0
  use_bias: bool = True
  init_std: float = 0.0  # 0: width^-1/2 of each tower
  attention_impl: str = ""
  scan_layers: bool = False
  remat: str = "none"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.loss not in contrastive.KINDS:
      raise UserError(f"config.model.loss={self.loss!r}: expected one of "
                      f"{', '.join(contrastive.KINDS)}")
    for key in ("embed_dim", "vision_d_model", "vision_layers", "vision_heads",
                "text_d_model", "text_layers", "text_heads", "max_len"):
      if getattr(self, key) < 1:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be >= 1")
    for side in ("vision", "text"):
      width, heads = getattr(self, f"{side}_d_model"), getattr(self, f"{side}_heads")
      if width % heads:
        raise UserError(f"config.model.{side}_d_model={width} is not divisible by "
                        f"config.model.{side}_heads={heads}")
    if self.init_std < 0:
      raise UserError(f"config.model.init_std={self.init_std} must be >= 0 (0: width^-1/2)")
    if self.vocab_size < 1:
      raise UserError(f"config.model.vocab_size={self.vocab_size} must be >= 1 (the caption "
                      "tokenizer's size budget)")
    if not ARGMAX_EOT <= self.eot_token_id < self.vocab_size:
      raise UserError(f"config.model.eot_token_id={self.eot_token_id} is not a token id of "
                      f"the vocabulary of {self.vocab_size} (or -1: pool at the largest id)")
    self.vision_config()  # each tower checks its own fields (patch tiling, dtypes, ...)
    self.text_config()

  def _block_fields(self, width: int) -> dict:
    fields = {key: getattr(self, key) for key in _SHARED_BLOCK_FIELDS}
    fields["init_std"] = self.init_std or width ** -0.5
    return fields

  def vision_config(self) -> vit.ViTConfig:
    """The image tower as a ViTConfig: CLIP's ViT, headless, pooled at the class token."""
    return vit.ViTConfig(
        **self._block_fields(self.vision_d_model), num_layers=self.vision_layers,
        d_model=self.vision_d_model, num_heads=self.vision_heads, mlp_dim=self.vision_mlp_dim,
        image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
        num_classes=0, pos_embedding="learned", pooling="cls", class_token=True,
        representation_size=0, pre_norm=True, patch_bias=False, causal=False)

  def text_config(self) -> TextConfig:
    """The text tower: causal pre-LN blocks, pooled at the EOT token."""
    return TextConfig(
        **self._block_fields(self.text_d_model), num_layers=self.text_layers,
        d_model=self.text_d_model, num_heads=self.text_heads, mlp_dim=self.text_mlp_dim,
        causal=True, vocab_size=self.vocab_size, max_len=self.max_len,
        eot_token_id=self.eot_token_id)


# The CLIP paper's CLIP-ViT hyper-parameters (table 20 of the arXiv version): embed dim; image
# resolution, vision width/layers/heads; text context, vocabulary, width/layers/heads; with
# heads = width / 64.
_OPENAI_TEXT = dict(vocab_size=49408, max_len=77, eot_token_id=49407, text_layers=12)
_B = dict(embed_dim=512, vision_d_model=768, vision_layers=12, vision_heads=12,
          text_d_model=512, text_heads=8, **_OPENAI_TEXT)
_L = dict(embed_dim=768, vision_d_model=1024, vision_layers=24, vision_heads=16,
          text_d_model=768, text_heads=12, **_OPENAI_TEXT)
VARIANTS = {
    "B/32": dict(image_size=224, patch_size=32, **_B),
    "B/16": dict(image_size=224, patch_size=16, **_B),
    "L/14": dict(image_size=224, patch_size=14, **_L),
    "L/14-336": dict(image_size=336, patch_size=14, **_L),
    # A CPU size: 4 blocks of 128 per tower, a caption BPE vocabulary of at most 1,024
    # tokens; EOT is genvis.data.caption_tokens.END_ID. Config files set image_size and
    # patch_size for their data.
    "cpu": dict(embed_dim=64, image_size=32, patch_size=4, vision_d_model=128,
                vision_layers=4, vision_heads=4, text_d_model=128, text_layers=4,
                text_heads=4, vocab_size=1024, max_len=32, eot_token_id=2),
}
_VARIANT_NAME = re.compile(r"^(?:clip-)?(?:vit-)?(.+)$", re.IGNORECASE)


def default_fields() -> dict:
  """CLIPConfig's fields with their defaults."""
  return {f.name: f.default for f in dataclasses.fields(CLIPConfig)}


def config_for(variant: str, **overrides) -> dict:
  """Every CLIPConfig field for a name such as "B/32", "ViT-L/14-336" or "cpu"."""
  name = _VARIANT_NAME.match(variant).group(1)
  if name not in VARIANTS:
    raise UserError(f"unknown CLIP variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  return {**default_fields(), **VARIANTS[name], **overrides}


def find_eot_positions(tokens, eot_token_id: int):
  """[B, T] int -> [B] int32: where each row is pooled (see the module docstring)."""
  if eot_token_id == ARGMAX_EOT:
    return jnp.argmax(tokens, axis=-1).astype(jnp.int32)
  is_eot = tokens == eot_token_id
  first = jnp.argmax(is_eot, axis=-1)  # the first True; 0 when there is none
  return jnp.where(jnp.any(is_eot, axis=-1), first, tokens.shape[-1] - 1).astype(jnp.int32)


def l2_normalise(x):
  """Rows of unit length, in float32 (a zero row stays zero rather than NaN)."""
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class TextEncoder(nn.Module):
  """Token + position embeddings -> causal blocks -> final norm; pooled at the EOT token."""

  config: TextConfig

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, eot_positions=None, pool: bool = True):
    """[B, T] -> the final state at each row's EOT (or at `eot_positions` [B]), [B, D];
    with `pool=False`, every token's state after the final norm, [B, T, D]."""
    cfg = self.config
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= cfg.max_len:
      raise UserError(f"tokens of shape {tuple(tokens.shape)}: expected (batch, length) with "
                      f"1 <= length <= config.model.max_len={cfg.max_len}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise UserError(f"tokens must be integer ids, got {tokens.dtype}")
    dtype, param_dtype = P.dtype(cfg.dtype), P.dtype(cfg.param_dtype)
    wte = TokenEmbed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=P.param_init(nn.initializers.normal(cfg.init_std),
                                                   (P.VOCAB, P.EMBED)), name="wte")
    wpe = self.param("wpe", P.param_init(nn.initializers.normal(cfg.init_std), (None, P.EMBED)),
                     (cfg.max_len, cfg.d_model), param_dtype)
    x = wte(tokens) + wpe[:tokens.shape[1]].astype(dtype)
    x = Dropout(cfg.dropout)(x, deterministic=not train)
    x = P.constrain(x, (P.BATCH, P.LENGTH, P.EMBED))
    x = TransformerStack(cfg, train, name="blocks")(x)
    x = norm_layer(cfg, "ln_f")(x)
    if not pool:
      return x
    if eot_positions is None:
      eot_positions = find_eot_positions(tokens, cfg.eot_token_id)
    return jnp.take_along_axis(x, eot_positions[:, None, None], axis=1)[:, 0]


def _projection(features: int, in_width: int, config: CLIPConfig, name: str) -> nn.Dense:
  # OpenAI: normal(width^-1/2), no bias.
  return nn.Dense(features, use_bias=False, dtype=P.dtype(config.dtype),
                  param_dtype=P.dtype(config.param_dtype),
                  kernel_init=P.param_init(nn.initializers.normal(in_width ** -0.5),
                                           (P.EMBED, None)), name=name)


class CLIP(nn.Module):
  """Image and text towers with a shared embedding space; see the module docstring."""

  config: CLIPConfig

  def setup(self):
    cfg = self.config
    self.vision = vit.ViT(cfg.vision_config())
    self.text = TextEncoder(cfg.text_config())
    self.image_projection = _projection(cfg.embed_dim, cfg.vision_d_model, cfg,
                                        "image_projection")
    self.text_projection = _projection(cfg.embed_dim, cfg.text_d_model, cfg, "text_projection")
    log_scale, bias = contrastive.initial_values(cfg.loss)
    scalar = lambda value: P.param_init(nn.initializers.constant(value), ())
    self.log_scale = self.param("log_scale", scalar(log_scale), (), jnp.float32)
    if cfg.loss == "siglip":
      self.logit_bias = self.param("logit_bias", scalar(bias), (), jnp.float32)

  def __call__(self, images, tokens, *, train: bool = False, eot_positions=None) -> dict:
    """images [B, S, S, C], tokens [B', T] -> dict(image_embeds [B, E], text_embeds [B', E]
    (unit rows, float32), logit_scale (scalar t), logits_per_image [B, B'] (float32) and,
    for SigLIP, logit_bias (scalar b, already added to the logits))."""
    image_embeds = self.encode_images(images, train=train)
    text_embeds = self.encode_texts(tokens, train=train, eot_positions=eot_positions)
    scale, bias = self.logit_scale_and_bias()
    logits = scale * image_embeds @ text_embeds.T
    out = dict(image_embeds=image_embeds, text_embeds=text_embeds, logit_scale=scale)
    if bias is not None:
      logits = logits + bias
      out["logit_bias"] = bias
    out["logits_per_image"] = logits
    return out

  def encode_images(self, images, *, train: bool = False):
    """[B, S, S, C] -> L2-normalised image embeddings [B, E] in float32."""
    pooled = self.vision(images, train=train)  # the class token after the final norm
    return l2_normalise(self.image_projection(pooled))

  def encode_texts(self, tokens, *, train: bool = False, eot_positions=None):
    """[B, T] token ids -> L2-normalised text embeddings [B, E] in float32."""
    pooled = self.text(tokens, train=train, eot_positions=eot_positions)
    return l2_normalise(self.text_projection(pooled))

  def logit_scale_and_bias(self):
    """(t, b): CLIP's min(exp(t'), 100) and None, or SigLIP's exp(t') and its bias b."""
    scale = contrastive.logit_scale_for(self.config.loss, self.log_scale)
    return scale, (self.logit_bias if self.config.loss == "siglip" else None)


def abstract_params(config: CLIPConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.channels),
                                jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, config.max_len), jnp.int32)
  variables = jax.eval_shape(lambda x, t: CLIP(config).init(jax.random.key(0), x, t),
                             images, tokens)
  return nn.meta.unbox(variables["params"])

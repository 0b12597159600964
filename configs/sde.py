"""Score-based generative modelling through SDEs (Song et al. 2021): task "sde".

  python -m genvis.main --config=configs/sde.py:data=gmm --workdir=runs/sde_gmm
  python -m genvis.main --config=configs/sde.py:data=digits,sde=vp --workdir=runs/sde_digits

Variants (comma-separated key=value after the colon):
  data = gmm (8 Gaussians on a circle) | grid (5x5 Gaussians) | gaussian (one correlated
         Gaussian) | moons | checkerboard: 2-D toy densities (genvis/data/toy2d.py), scored
         by an MLP; digits (embedded 8x8, 17 grey levels) | mnist (tfds, 28x28; 32x32 for the
         paper-sized U-Nets) | cifar10 (tfds, 32x32x3): images, scored by a U-Net. tfds data
         must be prepared in --config.data.tfds_data_dir (nothing downloads).
  sde  = ve (sigma_min 0.01, sigma_max about the largest distance between training examples,
         Song & Ermon 2020: toy 6, digits 10, mnist 30, cifar10 50) | vp | subvp (beta 0.1
         to 20), 1000 discrete scales.
  size = cpu (toy: a 3 x 256 MLP; images: the U-Net's "cpu" size, 32 wide, two levels, one
         ResBlock each, attention at half resolution; minutes on a 2-core CPU) | ddpmpp
         (score_sde's DDPM++ cont.: positional embedding of 999 t, the network predicts the
         noise) | ncsnpp (the same U-Net with NCSN++'s conventions: Fourier features of
         log sigma, output divided by sigma; without FIR resampling and the progressive
         pyramids, see genvis/models/unet.py). ddpmpp / ncsnpp are 32x32 U-Nets (mnist, resized
         to 32, and cifar10) for a GPU or TPU host; 2-D data and digits take size=cpu.
  With size=cpu the SDE picks the conventions: ve -> NCSN++'s, vp / subvp -> DDPM++'s.

Recipe (score_sde's, scaled down on CPU): Adam (b2 0.999, no weight decay), gradient
clipping at 1, warm-up then cosine decay on CPU (constant 2e-4 at paper sizes), EMA of the
parameters (0.999 on CPU; 0.9999 at paper sizes; `pretrained.load_trained` returns them),
continuous DSM with lambda = sigma^2 and per-dimension means (config.sde.weighting,
reduce_mean), t ~ U(1e-5, 1). Sampling: reverse-diffusion predictor + Langevin corrector
(snr 0.16), config.sample.num_steps steps. Class-conditional sampling: set
--config.sde.classifier=True to train a noise-conditional classifier alongside.

Evaluation at the end (and every eval.every steps): the held-out DSM loss on fixed draws
(val_loss), and val_likelihood/bits_per_dim: probability-flow ODE bits/dim of the first
eval.bpd_examples test examples (dequantised, with the bin offset; toy points: NLL in nats
against the mixture's true NLL, val_likelihood/true_nll_nats).

Reference runs (2-core CPU shared with other jobs, load 5-8; EMA parameters; the benchmarks'
docstrings hold the commands and the full figures):
- `data=gmm` / `data=grid` (vp): 10,000 steps of 512 points in ~110 s each; every mode
  covered (8/8, 25/25), 98 % / 96 % of the samples within 3 std of a mode (the exact score
  with the same sampler: 99 %); test NLL 0.34 / 0.16 nats against the true 0.31 / 0.06. With
  4,000 steps VP covered 14 of the grid's 25 modes: its training times rarely reach the small
  noise levels that separate modes 0.05 wide (VE, log-spaced sigma, covered all 25).
- `data=digits` (vp): 3,000 steps of 64 digits (0.68 M parameters, ~6.7 steps/s) in ~8 min;
  test bits/dim 2.23 (128 test digits, tol 1e-4) against 2.94 for a full-covariance
  Gaussian on the same dequantised digits; FD 0.9-1.3 on the digits classifier's features
  (445 samples, 500 PC steps; varies with the sampling seed) against a train-test floor of
  0.46. experiments/bench/sde_digits.py: 17 min end to end.
"""

from genvis import config_lib
from genvis.data import toy2d
from genvis.data.image_sources import named_data
from genvis.models import score_mlp, unet

IMAGE_DATA = ("digits", "mnist", "cifar10")
SIZES = ("cpu", "ddpmpp", "ncsnpp")
SDE_KINDS = {"ve": "vesde", "vp": "vpsde", "subvp": "subvpsde"}
VE_SIGMA_MAX = {"toy": 6.0, "digits": 10.0, "mnist": 30.0, "cifar10": 50.0}
CPU_IMAGE_SIZE = {"digits": 8, "mnist": 28, "cifar10": 32}

_TOY_RECIPE = dict(batch_size=512, steps=10000, lr=2e-3, ema_decay=0.999)
_CPU_IMAGE_RECIPE = dict(batch_size=64, steps=3000, lr=2e-3, ema_decay=0.999)


def _model(data: str, size: str, sde: str) -> dict:
  ve_conventions = size == "ncsnpp" or (size == "cpu" and sde == "ve")
  if data in toy2d.DENSITIES:
    if size != "cpu":
      raise ValueError(f"config variant size={size!r}: 2-D data takes size=cpu (an MLP)")
    model = score_mlp.default_fields()
    model.update(data_dim=0, hidden_width=256, num_layers=3, conditioning="add")
    if ve_conventions:  # log sigma spans ~6 units: lower frequencies than for t in [0, 1]
      model.update(time_input="log_std", fourier_scale=4.0, scale_by_sigma=True)
    return model
  if data == "digits" and size != "cpu":
    raise ValueError(f"config variant size={size!r} is a 32x32 U-Net: use data=mnist or "
                     "cifar10 (digits are 8x8: size=cpu)")
  if size == "cpu":
    image_size = CPU_IMAGE_SIZE[data]
    model = unet.config_for("cpu", image_size=image_size,
                            attention_resolutions=(image_size // 2,))
  else:
    model = unet.config_for("ddpmpp-cifar10", image_size=32)
  model.update(channels=0)  # from the data
  if ve_conventions:
    model.update(time_embedding="fourier", time_input="log_std", fourier_scale=16.0,
                 scale_by_sigma=True)
  else:
    model.update(time_embedding="positional", time_input="time", time_scale=999.0,
                 scale_by_sigma=False)
  return model


def _data(data: str, size: str) -> dict:
  if data in toy2d.DENSITIES:
    return dict(source="toy2d", density=data, batch_size=_TOY_RECIPE["batch_size"],
                test_size=2000, dataset_seed=0)
  if data not in IMAGE_DATA:
    raise ValueError(f"config variant data={data!r}: expected one of "
                     f"{', '.join(toy2d.DENSITIES + IMAGE_DATA)}")
  section = named_data(data)
  if data == "mnist" and size != "cpu":
    section["resolution"] = 32  # three halvings need a multiple of 8
  section["batch_size"] = _CPU_IMAGE_RECIPE["batch_size"] if size == "cpu" else 128
  return section


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"data": "gmm", "sde": "vp", "size": "cpu"})
  data, sde, size = variant["data"], variant["sde"], variant["size"]
  if sde not in SDE_KINDS:
    raise ValueError(f"config variant sde={sde!r}: expected one of {', '.join(SDE_KINDS)}")
  if size not in SIZES:
    raise ValueError(f"config variant size={size!r}: expected one of {', '.join(SIZES)}")
  is_toy = data in toy2d.DENSITIES
  c = config_lib.base_config()
  c.task = "sde"
  c.data = _data(data, size)
  c.model = _model(data, size, sde)
  c.sde = dict(
      kind=SDE_KINDS[sde],
      sigma_min=0.01,  # vesde only
      sigma_max=VE_SIGMA_MAX["toy" if is_toy else data],  # vesde only
      beta_min=0.1,  # vpsde and subvpsde only
      beta_max=20.0,  # vpsde and subvpsde only
      # No num_scales (score_sde's N): loss, samplers and likelihood here are continuous-
      # time; the sampler's steps are sample.num_steps.
      eps=1e-5,  # smallest training (and likelihood) time
      weighting="sigma2",  # sigma2 (lambda = s(t)^2) | likelihood (lambda = g(t)^2)
      reduce_mean=True,  # per-example loss: mean (True) or sum over the data's dims
      classifier=False,  # also train a noise-conditional classifier (class guidance)
      classifier_width=64,
      classifier_layers=2,
      classifier_weight=1.0,  # its cross-entropy's weight in the loss
  )
  recipe = _TOY_RECIPE if is_toy else _CPU_IMAGE_RECIPE
  c.train.update(steps=recipe["steps"], log_every=100, ema_decay=recipe["ema_decay"])
  c.optim.update(lr=recipe["lr"], min_lr=recipe["lr"] / 20, warmup_steps=100, b1=0.9,
                 b2=0.999, weight_decay=0.0, clip_norm=1.0, decay="cosine")
  if size != "cpu":  # score_sde: 1.3 M steps at constant 2e-4 after 5k warm-up, EMA 0.9999
    c.train.update(steps=1_300_000, ema_decay=0.9999)
    c.optim.update(lr=2e-4, min_lr=2e-4, warmup_steps=5000, decay="constant")
  c.eval.update(
      every=0,  # 0: only at the end (the likelihood evaluator is costly)
      num_batches=-1,  # the whole test set for val_loss
      # 0: no likelihood evaluator. Digits on CPU: ~2 min per 64 at tol 1e-4 (57 solver
      # steps); 1e-5 doubles the steps and moved bits/dim by 0.001 (experiments/bench).
      bpd_examples=1000 if is_toy else (128 if size == "cpu" else 10000),
      bpd_batch=512,  # examples per ODE solve
      likelihood_tol=1e-4 if size == "cpu" and not is_toy else 1e-5,  # rtol = atol
      likelihood_divergence="exact" if is_toy else "rademacher",
      num_levels=0,  # 0: digits 17, 8-bit images 256
  )
  c.checkpoint.every = 1000
  c.sample.update(
      every=0,
      num_samples=2000 if is_toy else 64,
      num_steps=500,
      predictor="reverse_diffusion",
      corrector="langevin",
      snr=0.16,
      n_corrector_steps=1,
      num_snapshots=6,  # trajectory pictures: x_T ... x_0
      per_class=250 if is_toy else 8,  # class-conditional samples per class (classifier)
      guidance_scale=1.0,
      inpaint_examples=8,  # test images completed from their top half
      inpaint_per_example=4,
  )
  return c

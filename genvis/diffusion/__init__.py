"""Score-based diffusion, model-agnostic: forward SDEs and their reverse / probability-flow
forms (sde.py), exact answers for Gaussian data (gaussian.py), training losses (losses.py),
probability-flow likelihoods in bits/dim (likelihood.py) and samplers (samplers.py).

Models only enter through a score function `score_fn(x [B, ...], t [B]) -> [B, ...]` (or a
velocity / noise predictor for the rectified-flow and DDPM losses), so a U-Net, a DiT or the
exact score of a toy density plug in alike.
"""

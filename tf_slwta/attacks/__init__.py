"""Adversarial attacks on any callable that maps images to logits.

Each attack takes float32 images `[B, H, W, C]` in [clip_min, clip_max] and
integer labels `[B]`, never modifies its inputs, and returns adversarial
images of the same shape. Stochastic models are handled by averaging
gradients over `eot_samples` passes and deciding over `mc_samples` passes
(see `eot`); gradient attacks take a separate `gradient_fn` for adaptive
attacks through a surrogate of the model (see `layers.surrogate`).
"""

from tf_slwta.attacks.apgd import apgd
from tf_slwta.attacks.apgd import apgd_targeted
from tf_slwta.attacks.combined import sequential
from tf_slwta.attacks.combined import worst_case
from tf_slwta.attacks.cw import carlini_wagner_l2
from tf_slwta.attacks.eot import mean_probabilities
from tf_slwta.attacks.eot import predict
from tf_slwta.attacks.fgsm import fgsm
from tf_slwta.attacks.noise import random_noise
from tf_slwta.attacks.pgd import pgd
from tf_slwta.attacks.square import square

__all__ = ['apgd', 'apgd_targeted', 'carlini_wagner_l2', 'fgsm',
           'mean_probabilities', 'pgd', 'predict', 'random_noise',
           'sequential', 'square',
           'worst_case']

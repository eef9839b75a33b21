"""Fast Gradient Sign Method (Goodfellow et al., 2015) and its L2 variant."""

from typing import Optional

import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot


def fgsm(logits_fn: eot.LogitsFn, x, y, eps: float, *, norm='inf',
         clip_min: float = 0.0, clip_max: float = 1.0, targeted: bool = False,
         eot_samples: int = 1,
         gradient_fn: Optional[eot.LogitsFn] = None) -> tf.Tensor:
  """One step of size `eps` along the loss gradient's steepest direction.

  L-inf: x + eps * sign(grad); L2: x + eps * grad / ||grad||_2; then
  clipped to [clip_min, clip_max]. Targeted attacks step down the loss of
  the target class instead.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`. Keep passing the
      same callable: compiled attacks are cached per callable.
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]` (the targets when `targeted`).
    eps: step size >= 0, in pixel units of the chosen norm.
    norm: np.inf / 'inf' or 2.
    clip_min, clip_max: valid pixel range.
    targeted: move towards `y` instead of away from it.
    eot_samples: passes averaged per gradient (stochastic models), >= 1.
    gradient_fn: the logits function whose gradient the step follows
      (default `logits_fn`; a surrogate for an adaptive attack).

  Returns:
    float32 `[B, H, W, C]` adversarial images in [clip_min, clip_max].
  """
  norm = common.normalize_norm(norm)
  eps = common.check_non_negative('eps', eps)
  eot_samples = common.check_count('eot_samples', eot_samples)
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  if eps == 0:
    return tf.identity(x)
  return _fgsm(gradient_fn or logits_fn, x, y, tf.constant(eps), norm, float(clip_min),
               float(clip_max), targeted, eot_samples)


@tf.function(reduce_retracing=True)
def _fgsm(gradient_fn, x, y, eps, norm, clip_min, clip_max, targeted,
          eot_samples):
  grad, _, _ = eot.loss_gradient(
      gradient_fn, lambda logits: common.cross_entropy(y, logits), x,
      eot_samples)
  if targeted:
    grad = -grad
  step = eps * common.steepest_direction(grad, norm)
  return tf.clip_by_value(x + step, clip_min, clip_max)

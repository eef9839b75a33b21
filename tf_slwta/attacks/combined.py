"""The seed's "all attacks combined", as a worst case or a sequence."""

from typing import Callable, Mapping, Tuple

import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot

# attack(images, labels) -> adversarial images of the same shape.
Attack = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def worst_case(logits_fn: eot.LogitsFn, x, y,
               adversarials: Mapping[str, tf.Tensor], *,
               mc_samples: int = 1) -> Tuple[tf.Tensor, tf.Tensor]:
  """Combines attacks' outputs: an example is robust only if all fail.

  Args:
    logits_fn: images -> logits.
    x: float32 clean images `[B, H, W, C]`.
    y: int labels `[B]`.
    adversarials: {attack name: its adversarial images `[B, H, W, C]`}.
    mc_samples: passes of the decision rule, >= 1.

  Returns:
    (images `[B, H, W, C]`: per example the first attack's image that fools
    the model, else the clean image; robust bool `[B]`: the model is right
    on the clean image and on every attack's image).
  """
  y = tf.cast(y, tf.int64)
  robust = tf.equal(eot.predict(logits_fn, x, mc_samples), y)
  chosen = tf.convert_to_tensor(x)
  found = tf.zeros_like(robust)
  for images in adversarials.values():
    fooled = tf.not_equal(eot.predict(logits_fn, images, mc_samples), y)
    take = tf.logical_and(fooled, tf.logical_not(found))
    chosen = tf.where(common.broadcast_mask(take, chosen), images, chosen)
    found = tf.logical_or(found, fooled)
    robust = tf.logical_and(robust, tf.logical_not(fooled))
  return chosen, robust


def sequential(x, y, attacks: Mapping[str, Attack]) -> tf.Tensor:
  """Runs attacks one after another, each from the previous one's output.

  This is how the seed's "all attacks combined" figure composes FGSM, PGD
  and CW. The total perturbation is not bounded by any single attack's eps
  (each attack bounds its own step from its own start).

  Args:
    x: float32 clean images `[B, H, W, C]`.
    y: int labels `[B]`.
    attacks: {name: attack(images, labels)}, applied in order.

  Returns:
    float32 `[B, H, W, C]`: the last attack's output.
  """
  current = tf.convert_to_tensor(x)
  for attack in attacks.values():
    current = attack(current, y)
  return current

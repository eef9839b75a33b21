"""The seed's "all attacks combined", as a worst case or a sequence."""

from typing import Callable, Mapping, Tuple

import tensorflow as tf

from tf_slwta.attacks import common

# attack(images, labels) -> adversarial images of the same shape.
Attack = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def worst_case(x, adversarials: Mapping[str, tf.Tensor],
               fooled: Mapping[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
  """Combines attacks' outputs: an example is robust only if all fail.

  The caller judges each attack once, with its decision rule, and passes
  the verdicts; judging again here would draw new Monte Carlo samples for a
  stochastic model and could contradict the per-attack scores.

  Args:
    x: float32 clean images `[B, H, W, C]`.
    adversarials: {attack name: its adversarial images `[B, H, W, C]`}.
    fooled: {attack name: bool `[B]`, the model was wrong on its image}.

  Returns:
    (images `[B, H, W, C]`: per example the first attack's image that fooled
    the model, else the clean image; bool `[B]`: some attack fooled it).
  """
  chosen = tf.convert_to_tensor(x)
  found = tf.zeros([tf.shape(chosen)[0]], tf.bool)
  for name, images in adversarials.items():
    hit = tf.convert_to_tensor(fooled[name])
    take = tf.logical_and(hit, tf.logical_not(found))
    chosen = tf.where(common.broadcast_mask(take, chosen), images, chosen)
    found = tf.logical_or(found, hit)
  return chosen, found


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

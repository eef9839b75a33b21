"""Expectation over transformation and the Monte Carlo decision rule.

A stochastic model (LWTA sampling, noise injection) gives a different answer
on every pass. Two rules keep its robustness from being overrated:
  * attacks follow the gradient averaged over `eot_samples` passes
    (Athalye et al., 2018), and
  * the model's decision is the argmax of the softmax averaged over
    `mc_samples` passes, and that same rule decides whether an attack
    succeeded and whether an example counts as correct.
With one sample each, both reduce to the plain deterministic rules.
"""

from typing import Callable

import tensorflow as tf

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def mean_over_samples(fn: Callable[[], tf.Tensor], samples: int) -> tf.Tensor:
  """Averages `fn()` over `samples` calls, in a loop that stays one graph.

  Args:
    fn: a function of no arguments returning a tensor; each call draws the
      model's randomness anew.
    samples: number of calls, >= 1 (a Python int).

  Returns:
    The mean of the calls, with `fn()`'s shape and dtype.
  """
  first = fn()
  if samples == 1:
    return first
  _, total = tf.while_loop(lambda i, _: i < samples,
                           lambda i, acc: (i + 1, acc + fn()),
                           (tf.constant(1), first))
  return total / tf.cast(samples, total.dtype)


def mean_probabilities(logits_fn: LogitsFn, x: tf.Tensor,
                       mc_samples: int = 1) -> tf.Tensor:
  """The model's class probabilities, averaged over `mc_samples` passes.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    x: float32 images `[B, H, W, C]`.
    mc_samples: passes, >= 1.

  Returns:
    float32 `[B, K]`, rows summing to 1.
  """
  return mean_over_samples(lambda: tf.nn.softmax(logits_fn(x)), mc_samples)


def predict(logits_fn: LogitsFn, x: tf.Tensor, mc_samples: int = 1) -> tf.Tensor:
  """The decision rule: argmax of `mean_probabilities`; int64 `[B]`."""
  return tf.argmax(mean_probabilities(logits_fn, x, mc_samples), axis=-1)


def probabilities_and_loss(logits_fn: LogitsFn,
                           loss_of_logits: Callable[[tf.Tensor], tf.Tensor],
                           x: tf.Tensor, samples: int = 1):
  """Mean softmax and mean per-example loss over `samples` passes.

  The forward half of `loss_gradient`, for judging a point without its
  gradient.

  Returns:
    (float32 `[B, K]` mean probabilities, float32 `[B]` mean loss).
  """

  def one_pass():
    logits = logits_fn(x)
    return tf.nn.softmax(logits), loss_of_logits(logits)

  if samples == 1:
    return one_pass()
  first = one_pass()
  _, *totals = tf.while_loop(
      lambda i, *_: i < samples,
      lambda i, *acc: (i + 1, *[a + b for a, b in zip(acc, one_pass())]),
      (tf.constant(1), *first))
  return tuple(t / samples for t in totals)


def loss_gradient(logits_fn: LogitsFn,
                  loss_of_logits: Callable[[tf.Tensor], tf.Tensor],
                  x: tf.Tensor, eot_samples: int = 1):
  """Gradient of a per-example loss, averaged over `eot_samples` passes.

  Args:
    logits_fn: images `[B, ...]` -> logits `[B, K]`; examples must not
      interact (models are called with training=False). For an adaptive
      attack, a surrogate of the model (see `layers.surrogate`).
    loss_of_logits: logits `[B, K]` -> per-example losses `[B]`.
    x: float32 `[B, ...]`, the point where the gradient is taken.
    eot_samples: passes, >= 1.

  Returns:
    (gradient float32 `[B, ...]`: d loss_b / d x_b per example, mean
    probabilities float32 `[B, K]` of the same passes, mean loss float32
    `[B]` of the same passes).
  """

  def one_pass():
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = logits_fn(x)
      losses = loss_of_logits(logits)
      loss = tf.reduce_sum(losses)
    grad = tape.gradient(loss, x)
    if grad is None:  # No path from the input (e.g. a hard quantizer).
      grad = tf.zeros_like(x)
    return grad, tf.nn.softmax(logits), losses

  if eot_samples == 1:
    return one_pass()
  first = one_pass()
  _, *totals = tf.while_loop(
      lambda i, *_: i < eot_samples,
      lambda i, *acc: (i + 1, *[a + b for a, b in zip(acc, one_pass())]),
      (tf.constant(1), *first))
  return tuple(t / eot_samples for t in totals)

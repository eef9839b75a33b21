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

import numpy as np
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


def mean_log_probabilities(logits_fn: LogitsFn, x: tf.Tensor,
                           samples: int = 1) -> tf.Tensor:
  """log of `mean_probabilities`, computed stably in log space.

  log((1/S) sum_s softmax(z_s)) = logsumexp_s(log_softmax(z_s)) - log S: no
  probability is ever rounded to 0, so a margin of it keeps telling points
  apart however saturated the logits are (log(softmax + tiny) goes flat).

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    x: float32 images `[B, H, W, C]`.
    samples: passes, >= 1.

  Returns:
    float32 `[B, K]`, each row's logsumexp 0.
  """
  first = tf.nn.log_softmax(logits_fn(x))
  if samples == 1:
    return first
  _, total = tf.while_loop(
      lambda i, _: i < samples,
      lambda i, acc: (i + 1, tf.math.reduce_logsumexp(
          tf.stack([acc, tf.nn.log_softmax(logits_fn(x))]), axis=0)),
      (tf.constant(1), first))
  return total - tf.math.log(tf.cast(samples, total.dtype))


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


def decision_margin_gradient(logits_fn: LogitsFn, x: tf.Tensor,
                             y: tf.Tensor, lag: tf.Tensor,
                             samples: int = 1):
  """The gradient of the decision's margin, EOT aimed at the decision rule.

  The decision is the argmax of the softmax averaged over passes, p-bar; the
  attacker maximizes m = log p-bar_j - log p-bar_y (j: the likeliest wrong
  class), which is what the decision sees, where plain EOT averages each
  pass's own loss. Since p-bar is a mean, grad log p-bar_k is
  sum_s p_{s,k} grad log p_{s,k} / (S p-bar_k): each pass's log-softmax
  gradient weighted by its share of p-bar. The weights use `lag`, log p-bar
  at a nearby point (the previous iterate's), so each pass needs one
  backward pass and no pass is kept in memory; the weights are ratios taken
  in log space, so saturated logits do not underflow them. For one
  deterministic pass (with lag = that pass) this is the logit margin
  z_j - z_y.

  Args:
    logits_fn: images `[B, ...]` -> logits `[B, K]` (a surrogate for an
      adaptive attack).
    x: float32 `[B, ...]`, where the gradient is taken.
    y: int64 labels `[B]`.
    lag: float32 `[B, K]`, log p-bar at a nearby point (e.g.
      `mean_log_probabilities` there); its likeliest wrong class is j.
    samples: passes S, >= 1.

  Returns:
    (gradient float32 `[B, ...]` of m, log p-bar float32 `[B, K]` of these
    passes (stable), m float32 `[B]` from them).
  """
  classes = tf.shape(lag)[-1]
  label = tf.one_hot(y, classes) > 0.5
  other = tf.argmax(tf.where(label, -float('inf'), lag), axis=-1)
  pick = lambda values, k: tf.gather(values, k, batch_dims=1)

  def one_pass():
    with tf.GradientTape() as tape:
      tape.watch(x)
      log_p = tf.nn.log_softmax(logits_fn(x))
      on_y, on_j = pick(log_p, y), pick(log_p, other)
      weight_y = tf.stop_gradient(tf.exp(on_y - pick(lag, y)))
      weight_j = tf.stop_gradient(tf.exp(on_j - pick(lag, other)))
      objective = tf.reduce_sum(weight_j * on_j - weight_y * on_y)
    grad = tape.gradient(objective, x)
    if grad is None:  # No path from the input (e.g. a hard quantizer).
      grad = tf.zeros_like(x)
    return grad, log_p

  grad, log_p = one_pass()
  if samples > 1:
    _, grad, log_p = tf.while_loop(
        lambda i, *_: i < samples,
        lambda i, g, lp: (i + 1, *(
            lambda new: (g + new[0], tf.math.reduce_logsumexp(
                tf.stack([lp, new[1]]), axis=0)))(one_pass())),
        (tf.constant(1), grad, log_p))
    grad = grad / samples
    log_p = log_p - tf.math.log(float(samples))
  wrong = tf.reduce_max(tf.where(label, -float('inf'), log_p), axis=-1)
  return grad, log_p, wrong - pick(log_p, y)


def settled_probabilities(logits_fn: LogitsFn, x, cap: int, block: int = 2,
                          z: float = 3.5):
  """The decision rule's probabilities, with no more passes than it needs.

  The decision is the argmax of the softmax averaged over `cap` passes.
  Passes are drawn `block` at a time, each time for the images not settled
  yet; after at least 2 blocks an image is settled when its top class's
  lead over the runner-up, d (mean over its n passes, per-pass spread s),
  could be overturned by the cap - n passes left only with probability
  about Phi(-z) (normal approximation): d cap / (cap - n) >=
  z s sqrt(1 / (cap - n) + 1 / n). The spread is estimated from few passes
  and checked after every block, so the answer differs from what the full
  cap would have said more often than Phi(-z): measured (cap 20, block 2,
  z 3.5), for 0.6% of images of a hard toy (3 classes, logit noise as large
  as the classes' spread; 15.5 passes on average) and 0.2% of an easy one
  (8 passes).

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    x: float32 images `[B, H, W, C]`.
    cap: passes at most (the decision rule's mc_samples), >= 1.
    block: passes per round, >= 1 (at least 2 to measure a spread).
    z: standard errors that settle an answer, >= 0.

  Returns:
    (float32 `[B, K]` mean probabilities over each image's passes, int64
    `[B]` passes used).
  """
  x = tf.convert_to_tensor(x)
  batch = int(x.shape[0])
  first = tf.nn.softmax(logits_fn(x)).numpy().astype(np.float64)
  classes = first.shape[-1]
  total = np.zeros((batch, classes))
  square = np.zeros((batch, classes, classes))
  passes = np.zeros(batch, np.int64)
  active = np.arange(batch)
  probs = first
  while len(active):
    rounds = min(block, cap - int(passes[active[0]])) if len(active) else 0
    for _ in range(rounds):
      if probs is None:
        probs = tf.nn.softmax(logits_fn(tf.gather(x, active))).numpy()
      total[active] += probs
      square[active] += probs[:, :, None] * probs[:, None, :]
      passes[active] += 1
      probs = None
    n = passes[active].astype(np.float64)
    mean = total[active] / n[:, None]
    order = np.argsort(-mean, axis=1)
    top, second = order[:, 0], order[:, 1]
    rows = np.arange(len(active))
    lead = mean[rows, top] - mean[rows, second]
    m2 = square[active]
    gap_square = (m2[rows, top, top] + m2[rows, second, second] -
                  2 * m2[rows, top, second]) / n
    spread = np.sqrt(np.maximum(gap_square - lead ** 2, 0.0) * n /
                     np.maximum(n - 1, 1))
    left = cap - n
    with np.errstate(divide='ignore', invalid='ignore'):
      settled = (left <= 0) | ((n >= min(2 * block, cap)) & (
          lead * cap / np.maximum(left, 1) >=
          z * spread * np.sqrt(1.0 / np.maximum(left, 1) + 1.0 / n)))
    active = active[~settled]
  return (tf.constant((total / passes[:, None]).astype(np.float32)),
          tf.constant(passes))

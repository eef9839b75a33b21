"""Projected Gradient Descent (Madry et al., 2018), L-inf and L2."""

from typing import Optional

import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting


def pgd(logits_fn: eot.LogitsFn, x, y, eps: float, alpha: float, steps: int,
        *, norm='inf', random_start: bool = True, restarts: int = 1,
        clip_min: float = 0.0, clip_max: float = 1.0, targeted: bool = False,
        eot_samples: int = 1, mc_samples: int = 1, seed: int = 0,
        gradient_fn: Optional[eot.LogitsFn] = None, ids=None) -> tf.Tensor:
  """Iterated steepest-ascent steps projected onto the eps ball around x.

  Each step: x' = clip(x + project(x' + alpha * dir(grad) - x, eps)), with
  dir = sign for L-inf and grad/||grad||_2 for L2. Every example runs all
  its steps and keeps its best iterate: a success (judged on the mean
  softmax of the passes that gave the gradient) over a failure, then the
  higher loss; and its iterate of highest loss. Nothing stops at a success
  that one noisy pass saw: on a stochastic model that verdict is often
  undone by the next decision, and a stopped attack would never resume.
  More steps therefore never help a deterministic model. Of those two
  points, over every restart, each example keeps the one the decision rule
  (mean softmax over fresh `mc_samples` passes of `logits_fn`, never the
  gradient passes, which may be a surrogate's) judges best.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`, the model whose
      decision counts (same callable on every call: compiled attacks are
      cached per callable).
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]` (the targets when `targeted`).
    eps: radius >= 0 of the norm ball.
    alpha: step size, 0 < alpha <= eps.
    steps: iterations >= 0.
    norm: np.inf / 'inf' or 2.
    random_start: start at a uniform random point of the ball.
    restarts: independent runs >= 1; the worst case per example is kept.
    clip_min, clip_max: valid pixel range.
    targeted: move towards `y` instead of away from it.
    eot_samples: passes averaged per gradient, >= 1.
    mc_samples: passes averaged for the decision, >= 1.
    seed: int or int64 scalar tensor, seed of the random starts (restart r
      uses (seed, r)).
    gradient_fn: the logits function whose gradient the attack follows
      (default `logits_fn`); an adaptive attack passes a surrogate, e.g.
      `layers.surrogate.surrogate_logits_fn(logits_fn, 'expected')`.
    ids: int `[B]`, the examples' ids, or None: with ids, an example's
      random draws depend on the seed and its id alone, so a run on part of
      a batch attacks each example as the whole batch would (the
      evaluation's cascade).

  Returns:
    float32 `[B, H, W, C]` adversarial images within eps of x and inside
    [clip_min, clip_max].
  """
  norm = common.normalize_norm(norm)
  eps = common.check_non_negative('eps', eps)
  steps = common.check_count('steps', steps, low=0)
  restarts = common.check_count('restarts', restarts)
  eot_samples = common.check_count('eot_samples', eot_samples)
  mc_samples = common.check_count('mc_samples', mc_samples)
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  if eps == 0:
    return tf.identity(x)
  alpha = common.check_positive('alpha', alpha)
  if alpha > eps:
    raise ValueError(
        f'alpha={alpha} is larger than eps={eps}: every step would leave the '
        f'ball and be projected back. Use alpha <= eps (e.g. eps / 4 or '
        f'2.5 * eps / steps).')
  return _pgd(logits_fn, gradient_fn or logits_fn, x, y, tf.constant(eps),
              tf.constant(alpha), tf.constant(steps), norm, random_start,
              restarts, float(clip_min), float(clip_max), targeted,
              eot_samples, mc_samples, tf.cast(seed, tf.int64),
              reporting.token(),
              None if ids is None else tf.cast(ids, tf.int64))


@tf.function(reduce_retracing=True)
def _pgd(logits_fn, gradient_fn, x, y, eps, alpha, steps, norm, random_start,
         restarts, clip_min, clip_max, targeted, eot_samples, mc_samples,
         seed, token, ids):
  best = x
  best_success = tf.zeros_like(y, tf.bool)
  best_loss = tf.fill(tf.shape(y), -float('inf'))
  for restart in range(restarts):
    # One restart after the other, so progress is reported in order.
    with tf.control_dependencies([best]):
      adv = tf.identity(x)
    if random_start:
      noise = common.random_in_ball(tf.shape(x), eps, norm,
                                    tf.stack([seed, restart]), ids)
      adv = tf.clip_by_value(x + noise, clip_min, clip_max)
    candidates = _iterate(gradient_fn, x, y, adv, eps, alpha, steps, norm,
                          clip_min, clip_max, targeted, eot_samples,
                          lambda i, at=restart: reporting.report(
                              token, at * steps + i, restarts * steps))
    if restarts == 1 and gradient_fn is logits_fn and mc_samples == 1:
      # The decision is one pass of the model the gradient passes ran:
      # their verdict is the decision's (adversarial training's case).
      return candidates[0]
    for adv in candidates:  # Judged by the decision rule.
      probs = eot.mean_probabilities(logits_fn, adv, mc_samples)
      success = common.is_success(tf.argmax(probs, -1), y, targeted)
      loss = common.decision_loss(probs, y, targeted)
      take = common.better(success, loss, best_success, best_loss)
      best = common.keep_better(take, adv, best)
      best_success = tf.logical_or(best_success, success)
      best_loss = tf.where(take, loss, best_loss)
  return best


def _iterate(gradient_fn, x, y, adv, eps, alpha, steps, norm, clip_min,
             clip_max, targeted, eot_samples, report):
  """`steps` projected steps from `adv`.

  Returns:
    (each example's best iterate by the gradient passes: a success over a
    failure, then the higher loss; its iterate of highest loss): the
    candidates `_pgd` judges with the decision rule. `report(i)` is called
    in the loop with the steps done.
  """
  loss_fn = lambda logits: (-1.0 if targeted else 1.0) * common.cross_entropy(
      y, logits)

  def judge(point, probs, loss, best, best_success, best_loss):
    success = common.is_success(tf.argmax(probs, -1), y, targeted)
    take = common.better(success, loss, best_success, best_loss)
    return (common.keep_better(take, point, best),
            tf.logical_or(best_success, success),
            tf.where(take, loss, best_loss))

  def highest(point, loss, top, top_loss):
    take = loss > top_loss
    return common.keep_better(take, point, top), tf.where(take, loss, top_loss)

  def body(i, adv, best, best_success, best_loss, top, top_loss):
    grad, probs, loss = eot.loss_gradient(gradient_fn, loss_fn, adv,
                                          eot_samples)
    best, best_success, best_loss = judge(adv, probs, loss, best,
                                          best_success, best_loss)
    top, top_loss = highest(adv, loss, top, top_loss)
    report(i + 1)
    moved = adv + alpha * common.steepest_direction(grad, norm)
    moved = tf.clip_by_value(x + common.project(moved - x, eps, norm),
                             clip_min, clip_max)
    return i + 1, moved, best, best_success, best_loss, top, top_loss

  lowest = tf.fill(tf.shape(y), -float('inf'))
  init = (tf.constant(0), adv, adv, tf.zeros_like(y, tf.bool), lowest, adv,
          lowest)
  _, adv, best, best_success, best_loss, top, top_loss = tf.while_loop(
      lambda i, *_: i < steps, body, init)
  # The last step's point is judged too (forward passes only).
  probs, loss = eot.probabilities_and_loss(gradient_fn, loss_fn, adv,
                                          eot_samples)
  return (judge(adv, probs, loss, best, best_success, best_loss)[0],
          highest(adv, loss, top, top_loss)[0])

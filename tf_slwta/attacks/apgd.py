"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T.

APGD is PGD without a step size to tune. It starts with step 2 * eps, adds
momentum (0.75), and at checkpoints w_j = ceil(p_j * N) of its N iterations,
with p_0 = 0, p_1 = 0.22 and p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
halves an example's step and restarts it from its best point when either
  1. the loss rose in fewer than rho = 0.75 of the steps since the last
     checkpoint, or
  2. the step was not halved at the last checkpoint and the best loss has
     not improved since.
The loss is the cross-entropy (APGD-CE), the difference of logits ratio
(APGD-DLR, invariant to the logits' scale, so a model cannot hide behind
saturated softmax) or the decision's margin (loss 'margin': log p-bar_j -
log p-bar_y of the softmax averaged over the passes, what the decision rule
sees; `eot.decision_margin_gradient`; for one deterministic pass the logit
margin); APGD-T runs the targeted DLR loss towards each of the
`target_classes` most likely wrong classes in turn. With `eot_samples` > 1
every gradient and loss is averaged over that many passes (the "rand"
version AutoAttack uses for randomized defenses).

A run keeps two points per example: the last one its gradient passes called
a success and the one of highest loss. Which is returned, and which restart
or target class wins, the decision rule decides (fresh `mc_samples` passes
of `logits_fn`, never the gradient passes: in a surrogate gradient mode
those are a stand-in's, whose "success" the model may not share): a
success over a failure, then the higher attacker loss.
"""

from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting

LOSSES = ('ce', 'dlr', 'margin')


def checkpoints(steps: int) -> List[Tuple[int, int]]:
  """APGD's checkpoints for `steps` iterations: [(iteration, window), ...].

  At the end of iteration `iteration` (0-based) the step size is revised
  using the last `window` iterations; windows start at ceil(0.22 N) and
  shrink by ceil(0.03 N) down to ceil(0.06 N), as the reference code does.
  """
  first = max(int(0.22 * steps), 1)
  shrink = max(int(0.03 * steps), 1)
  smallest = max(int(0.06 * steps), 1)
  result, window, at = [], first, first
  while at <= steps:
    result.append((at - 1, window))
    window = max(window - shrink, smallest)
    at += window
  return result


def apgd(logits_fn: eot.LogitsFn, x, y, eps: float, *, norm='inf',
         steps: int = 100, loss: str = 'ce', restarts: int = 1,
         rho: float = 0.75, clip_min: float = 0.0, clip_max: float = 1.0,
         eot_samples: int = 1, mc_samples: int = 1, seed: int = 0,
         gradient_fn: Optional[eot.LogitsFn] = None, ids=None) -> tf.Tensor:
  """Untargeted APGD with the CE, DLR or decision-margin loss.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`, the model whose
      decision counts (keep the same callable: compiled attacks are cached
      per callable).
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]`.
    eps: radius >= 0 of the L-inf or L2 ball.
    norm: np.inf / 'inf' or 2.
    steps: iterations N >= 1 per restart (100 in AutoAttack).
    loss: 'ce', 'dlr' (needs K >= 3) or 'margin'.
    restarts: random starts >= 1; each example keeps the best by the
      decision rule.
    rho: the step-halving threshold in (0, 1) (0.75).
    clip_min, clip_max: valid pixel range.
    eot_samples: passes averaged per gradient and loss, >= 1.
    mc_samples: passes averaged per decision between restarts, >= 1.
    seed: int or int64 scalar tensor; restart r starts from seed (seed, r).
    gradient_fn: the logits function whose gradient the attack follows
      (default `logits_fn`; a surrogate for an adaptive attack).
    ids: int `[B]`, the examples' ids, or None: with ids, an example's
      random draws depend on the seed and its id alone, so a run on part of
      a batch attacks each example as the whole batch would (the
      evaluation's cascade).

  Returns:
    float32 `[B, H, W, C]` within eps of x, inside [clip_min, clip_max].
  """
  args = _check(x, y, eps, norm, steps, restarts, rho, clip_min, clip_max,
                eot_samples, mc_samples)
  if loss not in LOSSES:
    raise ValueError(f'loss={loss!r} is not supported; use one of '
                     f'{", ".join(LOSSES)}.')
  x, y, norm = args
  if eps == 0:
    return tf.identity(x)
  return _apgd(logits_fn, gradient_fn or logits_fn, x, y, None,
               tf.constant(float(eps)), norm, steps, loss, restarts,
               float(rho), float(clip_min), float(clip_max), eot_samples,
               mc_samples, tf.cast(seed, tf.int64), reporting.token(),
               None if ids is None else tf.cast(ids, tf.int64))


def apgd_targeted(logits_fn: eot.LogitsFn, x, y, eps: float, *, norm='inf',
                  steps: int = 100, target_classes: int = 9,
                  rho: float = 0.75, clip_min: float = 0.0,
                  clip_max: float = 1.0, eot_samples: int = 1,
                  mc_samples: int = 1, seed: int = 0,
                  gradient_fn: Optional[eot.LogitsFn] = None,
                  ids=None) -> tf.Tensor:
  """APGD-T: targeted DLR towards each of the most likely wrong classes.

  For t = 1 .. target_classes, the target of each example is its t-th most
  probable class other than y (by the decision rule on the clean image);
  one APGD run of `steps` iterations per target, with the targeted DLR
  loss. Success means any wrong decision, as in AutoAttack.

  Args:
    target_classes: how many targets, 1 <= target_classes <= K - 1 (9).
    Others as `apgd` (the targeted DLR loss needs K >= 4).

  Returns:
    float32 `[B, H, W, C]` within eps of x, inside [clip_min, clip_max].
  """
  x, y, norm = _check(x, y, eps, norm, steps, 1, rho, clip_min, clip_max,
                      eot_samples, mc_samples)
  target_classes = common.check_count('target_classes', target_classes)
  if eps == 0:
    return tf.identity(x)
  return _apgd(logits_fn, gradient_fn or logits_fn, x, y, target_classes,
               tf.constant(float(eps)), norm, steps, 'dlr', 1, float(rho),
               float(clip_min), float(clip_max), eot_samples, mc_samples,
               tf.cast(seed, tf.int64), reporting.token(),
               None if ids is None else tf.cast(ids, tf.int64))


def _check(x, y, eps, norm, steps, restarts, rho, clip_min, clip_max,
           eot_samples, mc_samples):
  norm = common.normalize_norm(norm)
  common.check_non_negative('eps', eps)
  common.check_count('steps', steps)
  common.check_count('restarts', restarts)
  common.check_count('eot_samples', eot_samples)
  common.check_count('mc_samples', mc_samples)
  if not 0 < rho < 1:
    raise ValueError(f'rho must be in (0, 1), got {rho}.')
  x = common.check_images(x, clip_min, clip_max)
  return x, common.check_labels(y, x.shape[0]), norm


def _unit(v: tf.Tensor, norm: str) -> tf.Tensor:
  """v scaled to unit L-inf or L2 norm per example."""
  axes = list(range(1, v.shape.rank))
  if norm == 'inf':
    size = tf.reduce_max(tf.abs(v), axis=axes, keepdims=True)
  else:
    size = tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True))
  return v / (size + 1e-12)


@tf.function(reduce_retracing=True)
def _apgd(logits_fn, gradient_fn, x, y, target_classes, eps, norm, steps,
          loss, restarts, rho, clip_min, clip_max, eot_samples, mc_samples,
          seed, token, ids):
  runs = []  # (restart index, targets or None)
  if target_classes is None:
    runs = [(r, None) for r in range(restarts)]
  else:
    clean = eot.mean_probabilities(logits_fn, x, mc_samples)
    classes = clean.shape[-1]
    if classes is not None and target_classes > classes - 1:
      raise ValueError(f'target_classes={target_classes} is more than the '
                       f'{classes - 1} wrong classes; use at most that.')
    # Rank the wrong classes: the label goes last.
    ranked = tf.cast(tf.argsort(
        clean - 2.0 * tf.one_hot(y, tf.shape(clean)[-1]), axis=-1,
        direction='DESCENDING'), tf.int64)
    runs = [(t, ranked[:, t]) for t in range(target_classes)]
  best, best_success, best_loss = x, tf.zeros_like(y, tf.bool), None
  for index, targets in runs:
    # One run after the other (not side by side), so progress is in order.
    with tf.control_dependencies([best]):
      candidates = _run(gradient_fn, x, y, targets, eps, norm, steps, loss,
                        rho, clip_min, clip_max, eot_samples,
                        tf.stack([seed, tf.constant(index, tf.int64)]), ids,
                        lambda i, at=index * steps: reporting.report(
                            token, at + i, len(runs) * steps))
    for adv in candidates:  # Judged by the decision rule.
      probs = eot.mean_probabilities(logits_fn, adv, mc_samples)
      success = common.is_success(tf.argmax(probs, -1), y, False)
      attacker_loss = common.decision_loss(probs, y, False)
      if best_loss is None:
        take = tf.ones_like(success)
        best_loss = attacker_loss
      else:
        take = common.better(success, attacker_loss, best_success, best_loss)
        best_loss = tf.where(take, attacker_loss, best_loss)
      best = common.keep_better(take, adv, best)
      best_success = tf.logical_or(best_success, success)
  return best


def halving(at_check, rises, window, rho, reduced, best_at_check,
            best_loss) -> tf.Tensor:
  """Which examples halve their step (and go back to their best point).

  At a checkpoint (`at_check`, bool scalar), where either
    1. the loss rose in at most `rho` of the `window` steps since the last
       checkpoint (`rises` float `[B]` of them), or
    2. the step was not halved at the last checkpoint (`reduced` bool `[B]`)
       and the best loss has not improved since (`best_at_check` >=
       `best_loss`, float `[B]`).

  Returns:
    bool `[B]`.
  """
  oscillating = rises <= window * rho
  stalled = tf.logical_and(tf.logical_not(reduced), best_at_check >= best_loss)
  return tf.logical_and(at_check, tf.logical_or(oscillating, stalled))


def _loss_fn(loss, y, targets):
  """logits `[B, K]` -> the attacker's per-example loss `[B]` (not used for
  'margin', whose gradient `eot.decision_margin_gradient` takes)."""
  if loss in ('ce', 'margin'):
    return lambda logits: common.cross_entropy(y, logits)
  needed = 3 if targets is None else 4

  def dlr(logits):
    classes = logits.shape[-1]
    if classes is not None and classes < needed:
      raise ValueError(
          f'The {"targeted " if targets is not None else ""}DLR loss needs '
          f'at least {needed} classes, the model has {classes}; use the CE '
          f'loss.')
    if targets is None:
      return common.dlr_loss(y, logits)
    return common.dlr_targeted_loss(y, targets, logits)

  return dlr


def _run(gradient_fn, x, y, targets, eps, norm, steps, loss, rho, clip_min,
         clip_max, eot_samples, seed, ids, report):
  """One APGD run from a random start.

  Returns:
    (the last point the gradient passes called a success, else the start's
    best; the point of highest loss), each float32 `[B, H, W, C]`: the
    candidates `_apgd` judges. `report(i)` is called in the loop with the
    iterations done (1..steps).
  """
  shape = tf.shape(x)
  if norm == 'inf':
    start = common.uniform_draws(shape, seed, ids, -1.0, 1.0)
  else:
    start = common.normal_draws(shape, seed, ids)
  adv = tf.clip_by_value(x + eps * _unit(start, norm), clip_min, clip_max)

  def project(point):
    return tf.clip_by_value(x + common.project(point - x, eps, norm),
                            clip_min, clip_max)

  loss_fn = _loss_fn(loss, y, targets)

  def evaluate(point, lag):
    """(gradient, success by the gradient passes, loss, log p-bar)."""
    if loss == 'margin':
      grad, log_p, value = eot.decision_margin_gradient(
          gradient_fn, point, y, lag, eot_samples)
    else:
      grad, probs, value = eot.loss_gradient(gradient_fn, loss_fn, point,
                                             eot_samples)
      log_p = lag  # Unused.
      return (grad, common.is_success(tf.argmax(probs, -1), y, False), value,
              log_p)
    return (grad, common.is_success(tf.argmax(log_p, -1), y, False), value,
            log_p)

  lag = (eot.mean_log_probabilities(gradient_fn, adv, eot_samples)
         if loss == 'margin' else tf.zeros([tf.shape(x)[0], 1]))
  grad, success, value, lag = evaluate(adv, lag)
  # Checkpoint table: is iteration i a checkpoint, and its window.
  table = checkpoints(steps)
  is_check = np.zeros(steps, bool)
  window = np.ones(steps, np.float32)
  for i, w in table:
    is_check[i], window[i] = True, w
  is_check, window = tf.constant(is_check), tf.constant(window)
  step_shape = tf.concat([shape[:1], tf.ones_like(shape[1:])], 0)
  state = dict(
      i=tf.constant(0), adv=adv, previous=adv, grad=grad,
      step=tf.fill(step_shape, 2.0 * eps),
      best=adv, best_grad=grad, best_loss=value,
      # As the reference, the first step's loss is compared with 0 (its
      # loss history starts as zeros).
      found=success, found_adv=adv, last_loss=tf.zeros_like(value),
      rises=tf.zeros_like(value), reduced=tf.ones_like(success),
      best_at_check=value, lag=lag)

  def body(s):
    i = s['i']
    momentum = tf.where(i > 0, 0.75, 1.0)
    z = project(s['adv'] + s['step'] * common.steepest_direction(
        s['grad'], norm))
    moved = project(s['adv'] + momentum * (z - s['adv'])
                    + (1.0 - momentum) * (s['adv'] - s['previous']))
    grad, success, value, lag = evaluate(moved, s['lag'])
    report(i + 1)
    found_adv = common.keep_better(success, moved, s['found_adv'])
    rises = s['rises'] + tf.cast(value > s['last_loss'], tf.float32)
    improved = value > s['best_loss']
    best = common.keep_better(improved, moved, s['best'])
    best_grad = common.keep_better(improved, grad, s['best_grad'])
    best_loss = tf.where(improved, value, s['best_loss'])
    # At a checkpoint: halve the step and go back to the best point where
    # the loss rose too rarely, or stalled after a step that was not halved.
    at_check = is_check[i]
    halve = halving(at_check, rises, window[i], rho, s['reduced'],
                    s['best_at_check'], best_loss)
    return [dict(
        i=i + 1,
        adv=common.keep_better(halve, best, moved), previous=s['adv'],
        grad=common.keep_better(halve, best_grad, grad),
        step=common.keep_better(halve, s['step'] / 2.0, s['step']),
        best=best, best_grad=best_grad, best_loss=best_loss,
        found=tf.logical_or(s['found'], success), found_adv=found_adv,
        last_loss=value, rises=tf.where(at_check, 0.0, rises),
        reduced=tf.where(at_check, halve, s['reduced']),
        best_at_check=tf.where(at_check, best_loss, s['best_at_check']),
        lag=lag)]

  s = tf.while_loop(lambda s: s['i'] < steps, body, [state])[0]
  return (common.keep_better(s['found'], s['found_adv'], s['best']),
          s['best'])


"""Carlini & Wagner's L2 attack (Carlini & Wagner, 2017).

Minimizes ||x' - x||_2^2 + c * f(x') over x' = box(tanh(w)), where box maps
(-1, 1) onto [clip_min, clip_max] and f is the margin loss
max(Z_y - max_{i != y} Z_i, -kappa) (targeted: max(max_{i != t} Z_i - Z_t,
-kappa)). Adam runs on the tanh-space offset; a per-example binary search
over c keeps, for every example, the smallest successful perturbation.

What counts as a success is the decision rule's verdict: each binary-search
step's smallest perturbation that its own passes saw succeed (and the
step's last iterate) is re-judged with fresh `mc_samples` passes before it
is kept or moves c. On a stochastic model the smallest "success" sits on
the decision boundary, where the next decision undoes most of them.
"""

from typing import Optional

import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting

_BIG = 1e10


def carlini_wagner_l2(logits_fn: eot.LogitsFn, x, y, *, c: float = 1e-2,
                      kappa: float = 0.0, steps: int = 100,
                      binary_search_steps: int = 5,
                      learning_rate: float = 0.01, abort_early: bool = True,
                      clip_min: float = 0.0, clip_max: float = 1.0,
                      targeted: bool = False, eot_samples: int = 1,
                      mc_samples: int = 1,
                      gradient_fn: Optional[eot.LogitsFn] = None
                      ) -> tf.Tensor:
  """Carlini-Wagner L2: the smallest successful perturbation per example.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]` (same callable on
      every call: compiled attacks are cached per callable).
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]` (the targets when `targeted`).
    c: initial trade-off constant > 0; the binary search moves it per example
      (x10 while no success is found, bisection after).
    kappa: confidence margin >= 0 in logits that a success must reach.
    steps: Adam iterations per binary-search step, >= 1.
    binary_search_steps: searches over c, >= 1.
    learning_rate: Adam step size > 0.
    abort_early: stop a search step when the loss has not fallen by 0.01%
      over a tenth of the iterations.
    clip_min, clip_max: valid pixel range.
    targeted: reach class `y` instead of leaving it.
    eot_samples: passes averaged per gradient (and per in-step success
      check), >= 1.
    mc_samples: passes of the decision that confirms a success, >= 1.
    gradient_fn: the logits function whose gradient the attack follows
      (default `logits_fn`; a surrogate for an adaptive attack).

  Returns:
    float32 `[B, H, W, C]`: for each example the image of smallest L2
    distance the decision rule confirmed as a success, or `x` itself where
    the attack failed.
  """
  c = common.check_positive('c', c)
  kappa = common.check_non_negative('kappa', kappa)
  steps = common.check_count('steps', steps)
  binary_search_steps = common.check_count('binary_search_steps',
                                           binary_search_steps)
  learning_rate = common.check_positive('learning_rate', learning_rate)
  eot_samples = common.check_count('eot_samples', eot_samples)
  mc_samples = common.check_count('mc_samples', mc_samples)
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  return _cw(logits_fn, gradient_fn or logits_fn, x, y, tf.constant(c), tf.constant(kappa),
             tf.constant(steps), tf.constant(binary_search_steps),
             tf.constant(learning_rate), abort_early, float(clip_min),
             float(clip_max), targeted, eot_samples, mc_samples,
             reporting.token())


def margin(logits: tf.Tensor, y: tf.Tensor, targeted: bool) -> tf.Tensor:
  """CW's f before the kappa floor: `[B]`, negative when the attack succeeds.

  Untargeted: Z_y - max_{i != y} Z_i; targeted: max_{i != t} Z_i - Z_t.
  """
  num_classes = tf.shape(logits)[-1]
  one_hot = tf.one_hot(y, num_classes, dtype=logits.dtype)
  label_logit = tf.reduce_sum(one_hot * logits, axis=-1)
  other_logit = tf.reduce_max(logits - one_hot * _BIG, axis=-1)
  return other_logit - label_logit if targeted else label_logit - other_logit


@tf.function(reduce_retracing=True)
def _cw(logits_fn, gradient_fn, x, y, c, kappa, steps, binary_search_steps,
        learning_rate, abort_early, clip_min, clip_max, targeted, eot_samples,
        mc_samples, token):
  scale = clip_max - clip_min
  to_image = lambda w: (tf.tanh(w) + 1.0) / 2.0 * scale + clip_min
  # Slightly inside (-1, 1) so that arctanh stays finite at the range ends.
  w0 = tf.atanh(((x - clip_min) / scale * 2.0 - 1.0) * 0.999999)
  batch = tf.shape(y)[0]
  axes = list(range(1, x.shape.rank))
  check_every = tf.maximum(steps // 10, 1)

  def attack_loss(modifier, const):
    """(total loss, per-example L2^2, mean margin, image) at `modifier`."""
    adv = to_image(w0 + modifier)
    l2 = tf.reduce_sum(tf.square(adv - x), axis=axes)
    f = eot.mean_over_samples(lambda: margin(gradient_fn(adv), y, targeted),
                              eot_samples)
    return tf.reduce_sum(l2 + const * tf.maximum(f, -kappa)), l2, f, adv

  def decided(images):
    """bool `[B]`: the decision rule calls `images` a success."""
    predictions = eot.predict(logits_fn, images, mc_samples)
    return common.is_success(predictions, y, targeted)

  def search_step(s, lower, upper, const, best_l2, best_adv):
    # A fresh Adam state per search step, as in the reference attack. The
    # step tracks its own smallest success as its passes saw it.
    def iteration(i, modifier, m, v, prev_loss, stop, step_l2, step_adv,
                  seen):
      with tf.GradientTape() as tape:
        tape.watch(modifier)
        loss, l2, f, adv = attack_loss(modifier, const)
      grad = tape.gradient(loss, modifier)
      if grad is None:  # No path from the input (e.g. a hard quantizer).
        grad = tf.zeros_like(modifier)
      reporting.report(token, s * steps + i + 1, binary_search_steps * steps)
      # Judge the point the loss was computed at, before moving it.
      hit = f <= -kappa
      improved = tf.logical_and(hit, l2 < step_l2)
      step_l2 = tf.where(improved, l2, step_l2)
      step_adv = common.keep_better(improved, adv, step_adv)
      seen = tf.logical_or(seen, hit)
      # Adam (Kingma & Ba) on the offset, written out so that its state can
      # be reset inside one compiled loop.
      t = tf.cast(i + 1, tf.float32)
      m = 0.9 * m + 0.1 * grad
      v = 0.999 * v + 0.001 * tf.square(grad)
      m_hat = m / (1.0 - 0.9 ** t)
      v_hat = v / (1.0 - 0.999 ** t)
      modifier -= learning_rate * m_hat / (tf.sqrt(v_hat) + 1e-8)
      if abort_early:
        checkpoint = tf.equal((i + 1) % check_every, 0)
        stop = tf.logical_and(checkpoint, loss > prev_loss * 0.9999)
        prev_loss = tf.where(checkpoint, loss, prev_loss)
      return (i + 1, modifier, m, v, prev_loss, stop, step_l2, step_adv,
              seen)

    zeros = tf.zeros_like(x)
    init = (tf.constant(0), zeros, zeros, zeros, tf.constant(float('inf')),
            tf.constant(False), tf.fill([batch], float('inf')), x,
            tf.zeros([batch], tf.bool))
    out = tf.while_loop(
        lambda i, *rest: tf.logical_and(i < steps, tf.logical_not(rest[4])),
        iteration, init)
    modifier, step_l2, step_adv, seen = out[1], out[6], out[7], out[8]
    # The decision rule confirms the step's smallest success, or else its
    # last iterate if that cleared the margin too (deeper past the boundary).
    _, last_l2, last_f, last_adv = attack_loss(modifier, const)
    confirmed = tf.logical_and(seen, decided(step_adv))
    fallback = tf.logical_and(
        tf.logical_and(tf.logical_not(confirmed), last_f <= -kappa),
        decided(last_adv))
    step_adv = common.keep_better(fallback, last_adv, step_adv)
    step_l2 = tf.where(fallback, last_l2, step_l2)
    success = tf.logical_or(confirmed, fallback)
    improved = tf.logical_and(success, step_l2 < best_l2)
    best_l2 = tf.where(improved, step_l2, best_l2)
    best_adv = common.keep_better(improved, step_adv, best_adv)
    # Binary search on c, per example.
    upper = tf.where(success, tf.minimum(upper, const), upper)
    lower = tf.where(success, lower, tf.maximum(lower, const))
    const = tf.where(upper < _BIG / 10, (lower + upper) / 2.0,
                     tf.where(success, const, const * 10.0))
    return s + 1, lower, upper, const, best_l2, best_adv

  ones = tf.ones([batch])
  state = (tf.constant(0), 0.0 * ones, _BIG * ones, c * ones,
           tf.fill([batch], float('inf')), x)
  state = tf.while_loop(lambda s, *_: s < binary_search_steps, search_step,
                        state)
  return state[5]

"""Random noise in the eps ball: the floor every real attack must beat."""

import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting


def random_noise(logits_fn: eot.LogitsFn, x, y, eps: float, *, norm='inf',
                 draws: int = 10, mc_samples: int = 1, seed: int = 0,
                 clip_min: float = 0.0, clip_max: float = 1.0,
                 ids=None) -> tf.Tensor:
  """The worst of `draws` random points on the eps sphere, per example.

  L-inf draws are random corners (every pixel +-eps), L2 draws uniform
  directions of length eps, both clipped to the pixel range. Each draw is
  judged by the decision rule; each example keeps its lowest margin. If
  this beats an attack, the attack's gradients are useless (Carlini et al.,
  2019).

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]`.
    eps: radius >= 0.
    norm: np.inf / 'inf' or 2.
    draws: random points per example, >= 1.
    mc_samples: passes per decision, >= 1.
    seed: int or int64 scalar tensor.
    clip_min, clip_max: valid pixel range.
    ids: int `[B]`, the examples' ids, or None: with ids, an example's
      random draws depend on the seed and its id alone, so a run on part of
      a batch attacks each example as the whole batch would (the
      evaluation's cascade).

  Returns:
    float32 `[B, H, W, C]` within eps of x, inside [clip_min, clip_max].
  """
  norm = common.normalize_norm(norm)
  eps = common.check_non_negative('eps', eps)
  draws = common.check_count('draws', draws)
  mc_samples = common.check_count('mc_samples', mc_samples)
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  return _random_noise(logits_fn, x, y, tf.constant(eps), norm, draws,
                       mc_samples, tf.cast(seed, tf.int64), float(clip_min),
                       float(clip_max), reporting.token(),
                       None if ids is None else tf.cast(ids, tf.int64))


@tf.function(reduce_retracing=True)
def _random_noise(logits_fn, x, y, eps, norm, draws, mc_samples, seed,
                  clip_min, clip_max, token, ids):
  # The draws in one tf.while_loop: one copy of the model in the graph
  # (unrolled, 20 draws traced in 7 s on a small CNN; the run takes 0.5 s).

  def one_draw(d, best, best_margin):
    draw_seed = tf.stack([seed, tf.cast(d, tf.int64)])
    if norm == 'inf':
      delta = eps * tf.sign(common.uniform_draws(tf.shape(x), draw_seed, ids,
                                                 -1.0, 1.0))
    else:
      delta = common.normal_draws(tf.shape(x), draw_seed, ids)
      delta = common.project(delta * 1e6, eps, '2')  # Onto the sphere.
    point = tf.clip_by_value(x + delta, clip_min, clip_max)
    margin = common.log_probability_margin(
        eot.mean_probabilities(logits_fn, point, mc_samples), y)
    take = margin < best_margin
    reporting.report(token, d + 1, draws)
    return (d + 1, common.keep_better(take, point, best),
            tf.where(take, margin, best_margin))

  _, best, _ = tf.while_loop(
      lambda d, *_: d < draws, one_draw,
      (tf.constant(0), x, tf.fill(tf.shape(y), float('inf'))))
  return best

"""Argument checks, norms and projections shared by the attacks."""

import numpy as np
import tensorflow as tf

_TINY = 1e-12


def normalize_norm(norm) -> str:
  """Accepts inf, np.inf, 'inf', 'linf', 2 or '2'; returns 'inf' or '2'."""
  text = str(norm).lower()
  if text in ('inf', 'linf', 'l_inf'):
    return 'inf'
  if text in ('2', 'l2', '2.0'):
    return '2'
  raise ValueError(f'norm={norm!r} is not supported; use np.inf or 2.')


def check_images(x, clip_min: float, clip_max: float) -> tf.Tensor:
  """Validates an attack's input images and returns them as float32.

  Args:
    x: images `[B, ...]`, finite, inside [clip_min, clip_max].
    clip_min, clip_max: the valid pixel range, clip_min < clip_max.

  Raises:
    ValueError: non-finite values, values outside the range, or an empty
      range; the message says which.
  """
  if not clip_min < clip_max:
    raise ValueError(f'clip_min={clip_min} must be below clip_max={clip_max}.')
  x = tf.convert_to_tensor(x, tf.float32)
  values = x.numpy() if tf.executing_eagerly() else None
  if values is not None:
    if not np.all(np.isfinite(values)):
      raise ValueError('The input images hold NaN or infinite values.')
    low, high = values.min(initial=clip_min), values.max(initial=clip_max)
    if low < clip_min - 1e-6 or high > clip_max + 1e-6:
      raise ValueError(
          f'The input images span [{low:.4g}, {high:.4g}], outside '
          f'[clip_min, clip_max] = [{clip_min}, {clip_max}]. Images are '
          f'expected in [0, 1]; rescale them or set clip_min/clip_max.')
  return x


def check_labels(y, batch: int) -> tf.Tensor:
  """Validates integer labels `[B]`; returns them as int64."""
  y = tf.convert_to_tensor(y)
  if not y.dtype.is_integer or y.shape.rank != 1 or (
      y.shape[0] is not None and y.shape[0] != batch):
    raise ValueError(f'Labels must be integers of shape [{batch}], got '
                     f'{y.dtype.name} {y.shape}.')
  return tf.cast(y, tf.int64)


def check_non_negative(name: str, value: float) -> float:
  """Returns `value` as a float; ValueError unless finite and >= 0."""
  if not np.isfinite(value) or value < 0:
    raise ValueError(f'{name} must be a finite number >= 0, got {value}.')
  return float(value)


def check_positive(name: str, value: float) -> float:
  """Returns `value` as a float; ValueError unless finite and > 0."""
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f'{name} must be a finite number > 0, got {value}.')
  return float(value)


def check_count(name: str, value: int, low: int = 1) -> int:
  """Returns `value` as an int; ValueError unless a whole number >= low."""
  if int(value) != value or value < low:
    raise ValueError(f'{name} must be an integer >= {low}, got {value}.')
  return int(value)


def _per_example_norm(v: tf.Tensor) -> tf.Tensor:
  """L2 norm of each example, shaped `[B, 1, ..., 1]` to broadcast."""
  axes = list(range(1, v.shape.rank))
  return tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True))


def steepest_direction(grad: tf.Tensor, norm: str) -> tf.Tensor:
  """The unit step of steepest ascent: sign(grad) for L-inf, grad/||grad||_2 for L2."""
  if norm == 'inf':
    return tf.sign(grad)
  return grad / (_per_example_norm(grad) + _TINY)


def project(delta: tf.Tensor, eps, norm: str) -> tf.Tensor:
  """Projects each example of `delta` onto the norm ball of radius `eps`."""
  if norm == 'inf':
    return tf.clip_by_value(delta, -eps, eps)
  return delta * tf.minimum(1.0, eps / (_per_example_norm(delta) + _TINY))


def uniform_draws(shape, seed, ids=None, minval=0.0, maxval=1.0,
                  dtype=tf.float32) -> tf.Tensor:
  """Uniform draws of `shape` `[B, ...]` in [minval, maxval), from `seed`.

  With `ids` (int `[B]`, each example's position in its whole batch), row b
  is row ids[b] of the draws the whole batch would get: stateless draws
  are a function of the seed and each number's index, so the first rows of
  a larger draw are those of a smaller one. An attack run on a subset of a
  batch (`evaluate_robustness`'s cascade) thus draws for each example what
  it would have drawn on the whole batch.
  """
  if ids is None:
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype)
  rows = tf.cast(tf.reduce_max(ids), tf.int32) + 1
  whole = tf.random.stateless_uniform(
      tf.concat([[rows], tf.cast(shape[1:], tf.int32)], 0), seed, minval,
      maxval, dtype)
  return tf.gather(whole, ids)


def normal_draws(shape, seed, ids=None) -> tf.Tensor:
  """Standard normal draws of `shape` `[B, ...]` (see `uniform_draws`)."""
  if ids is None:
    return tf.random.stateless_normal(shape, seed)
  rows = tf.cast(tf.reduce_max(ids), tf.int32) + 1
  whole = tf.random.stateless_normal(
      tf.concat([[rows], tf.cast(shape[1:], tf.int32)], 0), seed)
  return tf.gather(whole, ids)


def random_in_ball(shape, eps, norm: str, seed, ids=None) -> tf.Tensor:
  """A uniform random point of the norm ball of radius `eps` per example.

  Args:
    shape: `[B, ...]`.
    eps: radius.
    norm: 'inf' or '2'.
    seed: int `[2]` stateless seed.
    ids: int `[B]`, the examples' positions in their batch, or None (see
      `uniform_draws`).
  """
  if norm == 'inf':
    return uniform_draws(shape, seed, ids, -1.0, 1.0) * eps
  direction_seed, radius_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  direction = normal_draws(shape, direction_seed, ids)
  direction /= _per_example_norm(direction) + _TINY
  dims = tf.cast(tf.reduce_prod(shape[1:]), tf.float32)
  u = uniform_draws(tf.concat([shape[:1], tf.ones_like(shape[1:])], 0),
                    radius_seed, ids)
  return direction * eps * u ** (1.0 / dims)


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Per-example softmax cross-entropy; `[B]`."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                        logits=logits)


def dlr_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """Difference-of-logits-ratio loss (Croce & Hein, 2020); `[B]`.

  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12), with z_pi the logits
  sorted in decreasing order: invariant to shifting and rescaling the
  logits, positive once the example is misclassified. Needs >= 3 classes.
  """
  ranked = tf.sort(logits, axis=-1, direction='DESCENDING')
  label_logit = tf.gather(logits, labels, batch_dims=1)
  top_is_label = tf.equal(tf.argmax(logits, -1), labels)
  other = tf.where(top_is_label, ranked[:, 1], ranked[:, 0])
  return -(label_logit - other) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def dlr_targeted_loss(labels: tf.Tensor, targets: tf.Tensor,
                      logits: tf.Tensor) -> tf.Tensor:
  """Targeted DLR loss (Croce & Hein, 2020); `[B]`, to be maximized.

  -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12). Needs >= 4 classes.
  """
  ranked = tf.sort(logits, axis=-1, direction='DESCENDING')
  label_logit = tf.gather(logits, labels, batch_dims=1)
  target_logit = tf.gather(logits, targets, batch_dims=1)
  return -(label_logit - target_logit) / (
      ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


def log_margin(log_probs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """log p_y - max_{i != y} log p_i of log-probabilities (or logits) `[B, K]`;
  `[B]`, negative once the decision is wrong. On one pass's logits it is
  the logit margin z_y - max_{i != y} z_i (shift invariant)."""
  one_hot = tf.one_hot(labels, tf.shape(log_probs)[-1]) > 0.5
  label = tf.reduce_max(tf.where(one_hot, log_probs, -float('inf')), axis=-1)
  other = tf.reduce_max(tf.where(one_hot, -float('inf'), log_probs), axis=-1)
  return label - other


def log_probability_margin(probs: tf.Tensor, labels: tf.Tensor,
                           targeted: bool = False) -> tf.Tensor:
  """log p_y - max_{i != y} log p_i of (mean) probabilities `[B, K]`; `[B]`.

  Negative once the decision is wrong (targeted: log p_t's lead, negative
  once the target wins). For one deterministic pass it equals the logit
  margin z_y - max_{i != y} z_i.
  """
  log_p = tf.math.log(probs + 1e-30)
  one_hot = tf.one_hot(labels, tf.shape(probs)[-1], dtype=probs.dtype)
  label = tf.reduce_sum(one_hot * log_p, axis=-1)
  other = tf.reduce_max(log_p - one_hot * 1e30, axis=-1)
  return other - label if targeted else label - other


def decision_loss(probs: tf.Tensor, labels: tf.Tensor,
                  targeted: bool) -> tf.Tensor:
  """The attacker's loss of decision probabilities `[B, K]`; `[B]`.

  -log p_y (untargeted) or log p_t (targeted): higher is better for the
  attacker. Used to pick among candidates the decision rule judged alike.
  """
  log_p = tf.math.log(tf.gather(probs, labels, batch_dims=1) + 1e-12)
  return log_p if targeted else -log_p


def better(success: tf.Tensor, loss: tf.Tensor, best_success: tf.Tensor,
           best_loss: tf.Tensor) -> tf.Tensor:
  """bool `[B]`: (success, loss) beats (best_success, best_loss).

  A success beats a failure; between equals, the higher attacker loss wins.
  """
  return tf.logical_or(
      tf.logical_and(success, tf.logical_not(best_success)),
      tf.logical_and(tf.equal(success, best_success), loss > best_loss))


def keep_better(take: tf.Tensor, new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
  """Per example, `new` where `take` `[B]` else `old` (any matching shapes)."""
  return tf.where(broadcast_mask(take, new), new, old)


def is_success(predictions: tf.Tensor, labels: tf.Tensor,
               targeted: bool) -> tf.Tensor:
  """bool `[B]`: the prediction is the target (targeted) or not the label."""
  hit = tf.equal(predictions, labels)
  return hit if targeted else tf.logical_not(hit)


def broadcast_mask(mask: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
  """bool `[B]` reshaped to `[B, 1, ..., 1]` to select whole examples of `like`."""
  return mask[(slice(None),) + (None,) * (like.shape.rank - 1)]

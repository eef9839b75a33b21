"""Square Attack (Andriushchenko et al., ECCV 2020): no gradients at all.

A random search over localized square-shaped updates. Each iteration
proposes, for every example still to fool, a change inside one random
square window and keeps it if the margin of the decision rule (log p_y -
max_{i != y} log p_i of the softmax averaged over `mc_samples` passes)
goes down. The window's side follows the paper's schedule: a share p of
the image, p_init halved at iterations 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000 (rescaled to a budget other than 10,000 queries).

  L-inf: start from vertical stripes of +-eps; a proposal sets the window
         to x +- eps, one sign per channel.
  L2:    start from a grid of centred "pseudo-Gaussian" blocks; a proposal
         moves the perturbation's mass from one window into another with a
         new pseudo-Gaussian pattern, keeping ||delta||_2 = eps.

Because it never looks at a gradient, Square is the audit's check that a
model's gradients are not merely masked. The window position is shared by
the batch in an iteration and the signs are drawn per example, as in the
reference code. On a deterministic model (mc_samples = 1) an example stops
once it is fooled; on a stochastic one the search keeps lowering the
estimated margin, since one noisy verdict is no success.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(iteration: int, queries: int, p_init: float) -> float:
  """The share of the image the window covers at `iteration` (0-based)."""
  it = int(iteration / queries * 10000)
  halvings = sum(it > at for at in _P_HALVINGS)
  return p_init / 2 ** halvings


def window_sizes(queries: int, p_init: float, image_shape: Tuple[int, int, int],
                 norm: str) -> np.ndarray:
  """Side of the square window at each iteration; int32 `[queries]`."""
  h, w, c = image_shape
  sizes = []
  for i in range(queries):
    side = int(round(np.sqrt(p_schedule(i, queries, p_init) * h * w)))
    if norm == '2':
      side = max(side, 3)
      side += 1 - side % 2  # Odd, so the pattern has a centre.
    sizes.append(min(max(side, 1), h, w))
  return np.array(sizes, np.int32)


def _rectangle_pattern(a: int, b: int) -> np.ndarray:
  """Nested centred rectangles weighted 1 / (k + 1)^2, unit L2 norm."""
  ci, cj = a // 2, b // 2
  rings = max(ci + 1, cj + 1)
  weights = np.cumsum([1.0 / (k + 1) ** 2 for k in range(rings)][::-1])[::-1]
  i, j = np.meshgrid(np.arange(a), np.arange(b), indexing='ij')
  pattern = weights[np.maximum(np.abs(i - ci), np.abs(j - cj))]
  return pattern / np.sqrt(np.sum(pattern ** 2))


def pseudo_gaussian(side: int) -> np.ndarray:
  """The L2 attack's s x s pattern: + rectangles over - rectangles, unit L2."""
  top = side // 2
  pattern = np.zeros((side, side))
  if top:
    pattern[:top] = _rectangle_pattern(top, side)
  pattern[top:] = -_rectangle_pattern(side - top, side)
  return pattern / np.sqrt(np.sum(pattern ** 2))


def square(logits_fn: eot.LogitsFn, x, y, eps: float, *, norm='inf',
           queries: int = 5000, p_init: float = 0.8, mc_samples: int = 1,
           seed: int = 0, clip_min: float = 0.0, clip_max: float = 1.0
           ) -> tf.Tensor:
  """Square Attack, untargeted, L-inf or L2.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]` (keep the same
      callable: compiled attacks are cached per callable).
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]`.
    eps: radius >= 0 of the L-inf or L2 ball.
    norm: np.inf / 'inf' or 2.
    queries: iterations >= 1 after the initial query; each is one decision
      (mc_samples passes) on the whole batch.
    p_init: initial share of the image a window covers, in (0, 1] (0.8 as
      AutoAttack; the paper used 0.05 for L-inf on ImageNet).
    mc_samples: passes averaged per decision, >= 1.
    seed: int or int64 scalar tensor of the random search.
    clip_min, clip_max: valid pixel range.

  Returns:
    float32 `[B, H, W, C]` within eps of x, inside [clip_min, clip_max]: each
    example's lowest-margin point found.
  """
  norm = common.normalize_norm(norm)
  eps = common.check_non_negative('eps', eps)
  queries = common.check_count('queries', queries)
  mc_samples = common.check_count('mc_samples', mc_samples)
  if not 0 < p_init <= 1:
    raise ValueError(f'p_init must be in (0, 1], got {p_init}.')
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  if x.shape.rank != 4:
    raise ValueError(f'Square attack needs images [B, H, W, C], got {x.shape}.')
  if eps == 0:
    return tf.identity(x)
  image_shape = tuple(int(d) for d in x.shape[1:])
  sizes = window_sizes(queries, p_init, image_shape, norm)
  patterns = None
  if norm == '2':
    # One padded pattern per distinct size and orientation: [L, 2, H, W].
    levels = sorted(set(sizes.tolist()))
    padded = np.zeros((len(levels), 2) + image_shape[:2], np.float32)
    for k, side in enumerate(levels):
      pattern = pseudo_gaussian(side)
      padded[k, 0, :side, :side] = pattern
      padded[k, 1, :side, :side] = pattern.T
    patterns = tf.constant(padded)
    sizes_level = np.array([levels.index(s) for s in sizes], np.int32)
  else:
    sizes_level = np.zeros_like(sizes)
  return _square(logits_fn, x, y, tf.constant(float(eps)), norm,
                 tf.constant(sizes), tf.constant(sizes_level), patterns,
                 mc_samples, tf.cast(seed, tf.int64), float(clip_min),
                 float(clip_max), reporting.token())


@tf.function(reduce_retracing=True)
def _square(logits_fn, x, y, eps, norm, sizes, sizes_level, patterns,
            mc_samples, seed, clip_min, clip_max, token):
  h, w, c = x.shape[1], x.shape[2], x.shape[3]
  batch = tf.shape(x)[0]
  stop_at_success = mc_samples == 1

  def margin_of(images):
    probs = eot.mean_probabilities(logits_fn, images, mc_samples)
    return common.log_probability_margin(probs, y)

  def signs(shape, draw_seed):
    return tf.sign(tf.random.stateless_uniform(shape, draw_seed, -1.0, 1.0))

  def window(top, left, side):
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    inside = ((rows >= top) & (rows < top + side) &
              (cols >= left) & (cols < left + side))
    return tf.cast(inside, x.dtype)[None, :, :, None]  # [1, H, W, 1]

  def spatial_norm(v):  # Per example and channel: [B, 1, 1, C].
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2], keepdims=True))

  def image_norm(v):  # Per example: [B, 1, 1, 1].
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2, 3], keepdims=True))

  init_seed = tf.stack([seed, tf.constant(-1, tf.int64)])
  if norm == 'inf':
    start = x + eps * signs(tf.stack([batch, 1, w, c]), init_seed)
  else:
    side = h // 5
    offset = (h - 5 * side) // 2
    block = pseudo_gaussian(side).astype(np.float32)
    grid = np.zeros((h, w), np.float32)
    delta = tf.zeros_like(x)
    k = 0
    for bi in range(h // side):
      for bj in range(w // side):
        top, left = offset + bi * side, offset + bj * side
        if top + side > h or left + side > w:
          continue
        grid[:] = 0.0
        grid[top:top + side, left:left + side] = block
        sign = signs(tf.stack([batch, 1, 1, c]),
                     tf.stack([seed, tf.constant(-2 - k, tf.int64)]))
        delta += tf.constant(grid)[None, :, :, None] * sign
        k += 1
    start = x + eps * delta / (image_norm(delta) + 1e-12)
  best = tf.clip_by_value(start, clip_min, clip_max)
  best_margin = margin_of(best)
  queries = tf.shape(sizes)[0]

  def active_of(margin):
    if stop_at_success:
      return margin > 0.0
    return tf.ones_like(margin, tf.bool)

  def body(i, best, best_margin):
    draw = tf.random.experimental.stateless_split(tf.stack([seed, tf.cast(
        i, tf.int64)]), 4)
    side = sizes[i]
    span = tf.stack([h - side + 1, w - side + 1])
    corner = tf.random.stateless_uniform([2], draw[0], 0, 2**30,
                                         dtype=tf.int32) % span
    mask = window(corner[0], corner[1], side)
    delta = best - x
    if norm == 'inf':
      proposal = x + eps * signs(tf.stack([batch, 1, 1, c]), draw[1])
      candidate = mask * proposal + (1.0 - mask) * best
    else:
      corner2 = tf.random.stateless_uniform([2], draw[2], 0, 2**30,
                                            dtype=tf.int32) % span
      mask2 = window(corner2[0], corner2[1], side)
      flip = tf.random.stateless_uniform([], draw[3], 0, 2, dtype=tf.int32)
      pattern = tf.roll(patterns[sizes_level[i], flip], [corner[0], corner[1]],
                        axis=[0, 1])[None, :, :, None]
      new = (pattern * signs(tf.stack([batch, 1, 1, c]), draw[1])
             + mask * delta / (spatial_norm(mask * delta) + 1e-12))
      both = tf.maximum(mask, mask2)
      budget = tf.sqrt(tf.maximum(eps ** 2 - image_norm(delta) ** 2, 0.0) / c
                       + spatial_norm(both * delta) ** 2)
      new = new / (spatial_norm(new) + 1e-12) * budget
      delta = (1.0 - mask2) * delta
      delta = (1.0 - mask) * delta + mask * new
      candidate = x + eps * delta / (image_norm(delta) + 1e-12)
    candidate = tf.clip_by_value(candidate, clip_min, clip_max)
    margin = margin_of(candidate)
    reporting.report(token, i + 1, queries)
    take = tf.logical_and(active_of(best_margin), margin < best_margin)
    return (i + 1, common.keep_better(take, candidate, best),
            tf.where(take, margin, best_margin))

  def cond(i, best, best_margin):
    return tf.logical_and(i < queries, tf.reduce_any(active_of(best_margin)))

  _, best, _ = tf.while_loop(cond, body, (tf.constant(0), best, best_margin))
  return best

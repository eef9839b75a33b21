"""Square Attack (Andriushchenko et al., ECCV 2020): no gradients at all.

A random search over localized square-shaped updates. Each iteration
proposes, for every example still to fool, a change inside one random
square window and keeps it if the margin goes down. The window's side
follows the paper's schedule: a share p of the image, p_init halved at
iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (rescaled to a
budget other than 10,000 queries).

  L-inf: start from vertical stripes of +-eps; a proposal sets the window
         to x +- eps, one sign per channel.
  L2:    start from a grid of centred "pseudo-Gaussian" blocks; a proposal
         moves the perturbation's mass from one window into another with a
         new pseudo-Gaussian pattern, keeping ||delta||_2 = eps.

The margin is log p_y - max_{i != y} log p_i of the softmax averaged over
`mc_samples` passes, computed in log space (`eot.mean_log_probabilities`);
for one deterministic pass it is the logit margin of the reference code.
A margin of log(softmax + tiny) would go flat once a model saturates its
logits, and Square would see nothing to climb.

Because it never looks at a gradient, Square is the audit's check that a
model's gradients are not merely masked. Each example draws its own
windows and signs, from the seed and its id (the reference code shares the
window's position across a batch): an example's search is the same
whatever batch it is in, as the evaluation's cascade needs. The window's
side follows the schedule for the batch. The search may follow a stand-in of the model (`score_fn`,
e.g. the expectation of its stochastic layers, as the gradient attacks'
surrogates); whatever it follows, the caller's decision rule judges the
result.

Deterministic or stochastic: on a deterministic score an example stops once
it is fooled. On a stochastic one a single estimate proves nothing, and the
incumbent's margin, once accepted on a lucky draw, would stay too low and
block every later proposal (the winner's curse). So every iteration also
re-estimates the incumbent with fresh passes, in the same call as the
proposal, and compares the proposal with the running mean of all the
incumbent's estimates; nothing stops early.
"""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting

_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# A noisy score's challenger takes over once its mean margin is below the
# incumbent's by _RACE_Z standard errors, within _RACE estimates.
_RACE_Z = 2.0
_RACE = 16


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
           seed: int = 0, clip_min: float = 0.0, clip_max: float = 1.0,
           restarts: int = 1, score_fn: Optional[eot.LogitsFn] = None,
           stochastic: Optional[bool] = None,
           score_stochastic: Optional[bool] = None, ids=None) -> tf.Tensor:
  """Square Attack, untargeted, L-inf or L2.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`, the model (keep
      the same callable: compiled attacks are cached per callable).
    x: float32 images `[B, H, W, C]` in [clip_min, clip_max] (not modified).
    y: int labels `[B]`.
    eps: radius >= 0 of the L-inf or L2 ball.
    norm: np.inf / 'inf' or 2.
    queries: iterations >= 1 per restart after the initial query.
    p_init: initial share of the image a window covers, in (0, 1] (0.8 as
      AutoAttack; the paper used 0.05 for L-inf on ImageNet).
    mc_samples: passes averaged per margin estimate of a stochastic score,
      >= 1 (one for a deterministic one).
    seed: int or int64 scalar tensor of the random search.
    clip_min, clip_max: valid pixel range.
    restarts: independent searches >= 1 (new start and windows); each
      example keeps the one whose final margin is lowest.
    score_fn: the logits function whose margin the search lowers (default
      `logits_fn`), e.g. a surrogate of a stochastic model.
    stochastic: whether the model's decisions are random (its passes
      differ): then no example stops at its first success, since a margin
      just under 0 is still a coin flip for the model. None finds out with
      two passes on `x` (when called eagerly; inside a caller's tf.function
      it is taken as mc_samples > 1).
    score_stochastic: whether `score_fn`'s passes differ (then the
      incumbent is re-estimated; see the module docstring); None finds out
      the same way (`stochastic` when there is no `score_fn`).
    ids: int `[B]`, the examples' ids (default their positions): every
      random choice of an example's search (its start, windows and signs)
      depends on the seed and its id alone, so a search on part of a batch
      attacks each example as the whole batch would (the evaluation's
      cascade).

  Returns:
    float32 `[B, H, W, C]` within eps of x, inside [clip_min, clip_max]: each
    example's lowest-margin point found.
  """
  norm = common.normalize_norm(norm)
  eps = common.check_non_negative('eps', eps)
  queries = common.check_count('queries', queries)
  mc_samples = common.check_count('mc_samples', mc_samples)
  restarts = common.check_count('restarts', restarts)
  if not 0 < p_init <= 1:
    raise ValueError(f'p_init must be in (0, 1], got {p_init}.')
  x = common.check_images(x, clip_min, clip_max)
  y = common.check_labels(y, x.shape[0])
  if x.shape.rank != 4:
    raise ValueError(f'Square attack needs images [B, H, W, C], got {x.shape}.')
  if eps == 0:
    return tf.identity(x)
  def random(fn):
    if not tf.executing_eagerly():
      return mc_samples > 1
    return bool(tf.reduce_any(fn(x[:8]) != fn(x[:8])))

  if stochastic is None:
    stochastic = random(logits_fn)
  noisy = score_stochastic
  if noisy is None:
    noisy = stochastic if score_fn is None else random(score_fn)
  score_fn = score_fn or logits_fn
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
  return _square(score_fn, x, y, tf.constant(float(eps)), norm,
                 tf.constant(sizes), tf.constant(sizes_level), patterns,
                 mc_samples if noisy else 1, bool(noisy), bool(stochastic),
                 restarts,
                 tf.cast(seed, tf.int64), float(clip_min), float(clip_max),
                 reporting.token(),
                 tf.range(tf.shape(x)[0], dtype=tf.int64) if ids is None
                 else tf.cast(ids, tf.int64))


@tf.function(reduce_retracing=True)
def _square(score_fn, x, y, eps, norm, sizes, sizes_level, patterns,
            mc_samples, noisy, stochastic, restarts, seed, clip_min, clip_max,
            token, ids):
  queries = tf.shape(sizes)[0]
  best, best_margin = x, None
  for restart in range(restarts):
    with tf.control_dependencies([best]):  # In order, for the progress.
      restart_seed = tf.stack([seed, tf.constant(restart, tf.int64)])
    found, margin = _search(
        score_fn, x, y, eps, norm, sizes, sizes_level, patterns, mc_samples,
        noisy, not stochastic, restart_seed, ids, clip_min, clip_max,
        lambda i, at=restart: reporting.report(token, at * queries + i,
                                               restarts * queries))
    if best_margin is None:
      best, best_margin = found, margin
    else:
      take = margin < best_margin
      best = common.keep_better(take, found, best)
      best_margin = tf.where(take, margin, best_margin)
  return best


def _search(score_fn, x, y, eps, norm, sizes, sizes_level, patterns,
            mc_samples, noisy, stop_at_success, seed, ids, clip_min, clip_max,
            report):
  """One random search; (each example's incumbent, its margin estimate).

  `noisy`: the score's passes differ (re-estimate the incumbent);
  `stop_at_success`: an example stops once its margin is below 0 (the
  model decides deterministically). `report(i)` is called with the
  iterations done.
  """
  h, w, c = x.shape[1], x.shape[2], x.shape[3]
  batch = tf.shape(x)[0]

  def margin_of(images, labels=y):
    return common.log_margin(
        eot.mean_log_probabilities(score_fn, images, mc_samples), labels)

  def signs(shape, draw_seed):
    return tf.sign(common.uniform_draws(shape, draw_seed, ids, -1.0, 1.0))

  def window(top, left, side):
    """Each example's square of `side` at (top `[B]`, left `[B]`)."""
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    top, left = top[:, None, None], left[:, None, None]
    inside = ((rows >= top) & (rows < top + side) &
              (cols >= left) & (cols < left + side))
    return tf.cast(inside, x.dtype)[..., None]  # [B, H, W, 1]

  def placed(pattern, top, left):
    """`pattern` `[H, W]` (drawn at the top left) moved to each example's
    (top, left): `[B, H, W, 1]`."""
    rows = (tf.range(h)[None, :] - top[:, None]) % h  # [B, H]
    cols = (tf.range(w)[None, :] - left[:, None]) % w  # [B, W]
    moved = tf.gather(tf.gather(pattern, rows), cols, axis=2, batch_dims=1)
    return moved[..., None]

  def spatial_norm(v):  # Per example and channel: [B, 1, 1, C].
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2], keepdims=True))

  def image_norm(v):  # Per example: [B, 1, 1, 1].
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=[1, 2, 3], keepdims=True))

  init_seed = tf.stack([seed[0] * 1_000_003 + seed[1],
                        tf.constant(-1, tf.int64)])
  # Every choice of every iteration, per example, drawn at once: corner
  # (2), second corner (2), flip (1) and the channels' signs (C), in [0, 1).
  choices = common.uniform_draws(tf.stack([batch, tf.shape(sizes)[0], 5 + c]),
                                 tf.stack([init_seed[0], tf.constant(
                                     -100, tf.int64)]), ids)
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
                     tf.stack([init_seed[0], tf.constant(-2 - k, tf.int64)]))
        delta += tf.constant(grid)[None, :, :, None] * sign
        k += 1
    start = x + eps * delta / (image_norm(delta) + 1e-12)
  best = tf.clip_by_value(start, clip_min, clip_max)
  first = margin_of(best)
  queries = tf.shape(sizes)[0]
  # The search's state, per example. Deterministic: the incumbent `best`
  # and its margin (`inc_sum`, count 1). Noisy: the incumbent's fresh
  # estimates (sum and count, from the iteration after it took over: the
  # estimates that made it win are biased low by that very choice), the
  # spread of one estimate (pooled over every incumbent's fresh estimates,
  # Welford's M2 `pool_m2` over `pool_df` degrees of freedom), and a
  # challenger racing the incumbent (its sum and count of estimates).
  zeros = tf.zeros([batch])
  state = dict(i=tf.constant(0), drawn=tf.constant(0), best=best,
               inc_sum=first, inc_n=tf.ones([batch]), pool_m2=zeros,
               pool_df=zeros, challenger=best, chal_sum=zeros, chal_n=zeros,
               won=first)

  def active_of(s):
    if not stop_at_success:
      return tf.ones([batch], tf.bool)
    return s['inc_sum'] / s['inc_n'] > 0.0

  def propose(i, best):
    drawn = choices[:, i]  # [B, 5 + C]
    side = sizes[i]
    span = tf.cast(tf.stack([h - side + 1, w - side + 1]), x.dtype)
    corner = tf.cast(tf.floor(drawn[:, 0:2] * span), tf.int32)  # [B, 2]
    mask = window(corner[:, 0], corner[:, 1], side)
    new_signs = tf.sign(drawn[:, 5:] - 0.5)[:, None, None, :]  # [B, 1, 1, C]
    delta = best - x
    if norm == 'inf':
      proposal = x + eps * new_signs
      candidate = mask * proposal + (1.0 - mask) * best
    else:
      corner2 = tf.cast(tf.floor(drawn[:, 2:4] * span), tf.int32)
      mask2 = window(corner2[:, 0], corner2[:, 1], side)
      flip = tf.cast(drawn[:, 4] < 0.5, x.dtype)[:, None, None]
      pattern = (flip * placed(patterns[sizes_level[i], 1], corner[:, 0],
                               corner[:, 1])[..., 0] +
                 (1.0 - flip) * placed(patterns[sizes_level[i], 0],
                                       corner[:, 0], corner[:, 1])[..., 0])
      new = (pattern[..., None] * new_signs
             + mask * delta / (spatial_norm(mask * delta) + 1e-12))
      both = tf.maximum(mask, mask2)
      budget = tf.sqrt(tf.maximum(eps ** 2 - image_norm(delta) ** 2, 0.0) / c
                       + spatial_norm(both * delta) ** 2)
      new = new / (spatial_norm(new) + 1e-12) * budget
      delta = (1.0 - mask2) * delta
      delta = (1.0 - mask) * delta + mask * new
      candidate = x + eps * delta / (image_norm(delta) + 1e-12)
    return tf.clip_by_value(candidate, clip_min, clip_max)

  def deterministic_step(s):
    candidate = propose(s['i'], s['best'])
    margin = margin_of(candidate)
    take = tf.logical_and(active_of(s), margin < s['inc_sum'])
    return dict(s, best=common.keep_better(take, candidate, s['best']),
                inc_sum=tf.where(take, margin, s['inc_sum']))

  def noisy_step(s):
    # A challenger that looked better races the incumbent on fresh passes
    # until it is better with confidence (then it takes over), looks worse
    # (then it is dropped) or has had RACE estimates; otherwise a new
    # proposal is drawn. Both are estimated in one call.
    racing = s['chal_n'] > 0
    # The window schedule counts proposals, not queries: a race spends
    # several queries on one proposal.
    candidate = common.keep_better(racing, s['challenger'],
                                   propose(s['drawn'], s['best']))
    margins = margin_of(tf.concat([candidate, s['best']], 0),
                        tf.concat([y, y], 0))
    m_c, m_i = margins[:batch], margins[batch:]
    old_mean = s['inc_sum'] / tf.maximum(s['inc_n'], 1.0)
    inc_sum, inc_n = s['inc_sum'] + m_i, s['inc_n'] + 1.0
    inc_mean = inc_sum / inc_n
    seen = s['inc_n'] > 0
    pool_m2 = s['pool_m2'] + tf.where(seen, (m_i - old_mean) *
                                      (m_i - inc_mean), 0.0)
    pool_df = s['pool_df'] + tf.cast(seen, tf.float32)
    var = tf.where(pool_df > 0, pool_m2 / tf.maximum(pool_df, 1.0),
                   float('inf'))
    chal_sum = tf.where(racing, s['chal_sum'], 0.0) + m_c
    chal_n = tf.where(racing, s['chal_n'], 0.0) + 1.0
    gap = chal_sum / chal_n - inc_mean
    spread = tf.sqrt(var * (1.0 / chal_n + 1.0 / inc_n))
    take = gap < -_RACE_Z * spread
    keep = tf.logical_and(tf.logical_not(take), tf.logical_and(
        gap < 0.0, chal_n < _RACE))
    return dict(
        s, drawn=s['drawn'] + tf.cast(tf.reduce_any(tf.logical_not(racing)),
                                      tf.int32),
        best=common.keep_better(take, candidate, s['best']),
        inc_sum=tf.where(take, 0.0, inc_sum),
        inc_n=tf.where(take, 0.0, inc_n), pool_m2=pool_m2, pool_df=pool_df,
        won=tf.where(take, chal_sum / chal_n, s['won']),
        challenger=common.keep_better(keep, candidate, s['challenger']),
        chal_sum=tf.where(keep, chal_sum, 0.0),
        chal_n=tf.where(keep, chal_n, 0.0))

  def body(s):
    s = noisy_step(s) if noisy else deterministic_step(s)
    report(s['i'] + 1)
    # Slices by a dynamic batch size lose the static one; keep the start's.
    return [{k: tf.ensure_shape(v, state[k].shape) for k, v in
             dict(s, i=s['i'] + 1).items()}]

  def cond(s):
    return tf.logical_and(s['i'] < queries, tf.reduce_any(active_of(s)))

  s = tf.while_loop(cond, body, [state])[0]
  # Its margin: the fresh estimates', or (none yet) those it won with.
  return s['best'], tf.where(s['inc_n'] > 0, s['inc_sum'] /
                             tf.maximum(s['inc_n'], 1.0), s['won'])

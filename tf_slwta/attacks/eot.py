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


class BatchedPasses:
  """A logits function that can run several passes of a batch in one call.

  Calling it is one pass, as the wrapped function. `stacked(x, k)` tiles the
  batch k times and runs the k passes as one batch of k B images (each copy
  draws its own randomness, since a stochastic layer draws per element), so
  a device that is idle on B images gets k times the work per call. The
  helpers of this module use it for their Monte Carlo and EOT passes; any
  other logits function runs one pass per call. Whether it pays depends on
  the device and batch: measure with `benchmarks/batched_passes.py`.

  Args:
    logits_fn: images `[B, ...]` -> logits `[B, K]`; examples must not
      interact (training=False).
    passes_per_call: most passes per call, >= 1.
    max_images: most images per call (k B <= max_images, k >= 1): the cap
      that keeps memory bounded.
  """

  def __init__(self, logits_fn: LogitsFn, passes_per_call: int,
               max_images: int):
    if passes_per_call < 1 or max_images < 1:
      raise ValueError(
          f'passes_per_call ({passes_per_call}) and max_images '
          f'({max_images}) must be >= 1.')
    self.logits_fn = logits_fn
    self.passes_per_call = passes_per_call
    self.max_images = max_images

  def __call__(self, x: tf.Tensor) -> tf.Tensor:
    return self.logits_fn(x)

  def per_call(self, x: tf.Tensor, samples: int) -> int:
    """Passes per call for `samples` passes of `x`, within the caps; >= 1."""
    batch = x.shape[0]
    room = (self.max_images // batch) if batch else self.passes_per_call
    return max(1, min(self.passes_per_call, samples, room))

  def stacked(self, x: tf.Tensor, k: int) -> tf.Tensor:
    """Logits of k passes of `x` `[B, ...]` in one call: float32 `[k, B, K]`."""
    if k == 1:
      return self.logits_fn(x)[None]
    logits = self.logits_fn(tf.concat([x] * k, axis=0))
    return tf.reshape(logits, tf.concat([[k, tf.shape(x)[0]],
                                         tf.shape(logits)[1:]], axis=0))


def batched(logits_fn: LogitsFn, passes_per_call: int = 1,
            max_images: int = 8192) -> LogitsFn:
  """`logits_fn` as a `BatchedPasses` when passes_per_call > 1, else itself."""
  if passes_per_call <= 1:
    return logits_fn
  return BatchedPasses(logits_fn, passes_per_call, max_images)


def _per_call(logits_fn: LogitsFn, x: tf.Tensor, samples: int) -> int:
  if isinstance(logits_fn, BatchedPasses):
    return logits_fn.per_call(x, samples)
  return 1


def _stacked(logits_fn: LogitsFn, x: tf.Tensor, k: int) -> tf.Tensor:
  """float32 `[k, B, K]` logits of k passes (k calls unless batched)."""
  if isinstance(logits_fn, BatchedPasses):
    return logits_fn.stacked(x, k)
  return logits_fn(x)[None]


def _over_passes(one_call, samples: int, k: int, combine):
  """Folds `one_call(k)` over `samples` passes drawn k at a time.

  `one_call(n)` returns a tuple of tensors, each already reduced over its n
  passes (a sum, or a logsumexp); `combine` folds two such tuples. Full
  calls of k run in one `tf.while_loop` (one graph however many passes);
  a remainder of samples mod k passes is one more call.
  """
  calls, rest = divmod(samples, k)
  total = one_call(k)
  if calls > 1:
    _, *total = tf.while_loop(
        lambda i, *_: i < calls,
        lambda i, *acc: (i + 1, *combine(acc, one_call(k))),
        (tf.constant(1), *total))
  if rest:
    total = combine(total, one_call(rest))
  return tuple(total)


def _add(a, b):
  return tuple(u + v for u, v in zip(a, b))


def _logsumexp2(a, b):
  return tf.math.reduce_logsumexp(tf.stack([a, b]), axis=0)


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
  k = _per_call(logits_fn, x, mc_samples)
  (total,) = _over_passes(
      lambda n: (tf.reduce_sum(tf.nn.softmax(_stacked(logits_fn, x, n)),
                               axis=0),), mc_samples, k, _add)
  return total / mc_samples


@tf.function(reduce_retracing=True)
def compiled_mean_probabilities(logits_fn: LogitsFn, x: tf.Tensor,
                                mc_samples: int = 1) -> tf.Tensor:
  """`mean_probabilities` as one compiled call, for eager callers (the
  scoring decisions); one trace per logits function and pass count."""
  return mean_probabilities(logits_fn, x, mc_samples)


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
  k = _per_call(logits_fn, x, samples)
  (total,) = _over_passes(
      lambda n: (tf.math.reduce_logsumexp(
          tf.nn.log_softmax(_stacked(logits_fn, x, n)), axis=0),),
      samples, k, lambda a, b: (_logsumexp2(a[0], b[0]),))
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

  def one_call(n):
    logits = _stacked(logits_fn, x, n)
    return (tf.reduce_sum(tf.nn.softmax(logits), axis=0),
            tf.add_n([loss_of_logits(logits[i]) for i in range(n)]))

  totals = _over_passes(one_call, samples, _per_call(logits_fn, x, samples),
                        _add)
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

  def one_call(n):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = _stacked(logits_fn, x, n)
      losses = tf.add_n([loss_of_logits(logits[i]) for i in range(n)])
      loss = tf.reduce_sum(losses)
    grad = tape.gradient(loss, x)
    if grad is None:  # No path from the input (e.g. a hard quantizer).
      grad = tf.zeros_like(x)
    return grad, tf.reduce_sum(tf.nn.softmax(logits), axis=0), losses

  totals = _over_passes(one_call, eot_samples,
                        _per_call(logits_fn, x, eot_samples), _add)
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

  def one_call(n):
    with tf.GradientTape() as tape:
      tape.watch(x)
      log_p = tf.nn.log_softmax(_stacked(logits_fn, x, n))  # [n, B, K]
      on_y = tf.stack([pick(log_p[i], y) for i in range(n)])
      on_j = tf.stack([pick(log_p[i], other) for i in range(n)])
      weight_y = tf.stop_gradient(tf.exp(on_y - pick(lag, y)))
      weight_j = tf.stop_gradient(tf.exp(on_j - pick(lag, other)))
      objective = tf.reduce_sum(weight_j * on_j - weight_y * on_y)
    grad = tape.gradient(objective, x)
    if grad is None:  # No path from the input (e.g. a hard quantizer).
      grad = tf.zeros_like(x)
    return grad, tf.math.reduce_logsumexp(log_p, axis=0)

  grad, log_p = _over_passes(
      one_call, samples, _per_call(logits_fn, x, samples),
      lambda a, b: (a[0] + b[0], _logsumexp2(a[1], b[1])))
  grad = grad / samples
  log_p = log_p - tf.math.log(float(samples))
  wrong = tf.reduce_max(tf.where(label, -float('inf'), log_p), axis=-1)
  return grad, log_p, wrong - pick(log_p, y)


@tf.function(reduce_retracing=True)
def _pass_probabilities(logits_fn: LogitsFn, x: tf.Tensor, n: int,
                        in_one_call: bool) -> tf.Tensor:
  """float32 `[n, B, K]`: the softmax of n passes of `x`, as one compiled
  call (eager Keras calls cost about 50 ms each on a small CNN, ten times
  the pass itself); `in_one_call` stacks them in one batch (`_stacked`)."""
  if in_one_call:
    return tf.nn.softmax(_stacked(logits_fn, x, n))
  return tf.stack([tf.nn.softmax(logits_fn(x)) for _ in range(n)])


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
  first = _pass_probabilities(logits_fn, x, 1, True)[0].numpy().astype(
      np.float64)
  classes = first.shape[-1]
  total = np.zeros((batch, classes))
  square = np.zeros((batch, classes, classes))
  passes = np.zeros(batch, np.int64)
  active = np.arange(batch)
  probs = first
  while len(active):
    rounds = min(block, cap - int(passes[active[0]]))
    drawn = [] if probs is None else [probs]
    if rounds > len(drawn):
      points = tf.gather(x, active)
      n = rounds - len(drawn)
      drawn += list(_pass_probabilities(
          logits_fn, points, n, _per_call(logits_fn, points, n) == n).numpy())
    for probs in drawn[:rounds]:
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


def finite_differences(logits_fn: LogitsFn, sigma: float,
                       pairs: int, tile: int = 1,
                       max_images: int = 8192) -> LogitsFn:
  """`logits_fn` whose input gradient is estimated from its values alone.

  The forward pass is `logits_fn` itself; the backward pass never
  differentiates it. It estimates the gradient of the model smoothed by
  Gaussian input noise of s.d. `sigma` from `pairs` antithetic pairs of
  queries (NES; Ilyas et al., 2018, as SPSA in Uesato et al., 2018):
  for a vector v at the output, g = mean_i <v, f(x + sigma u_i) -
  f(x - sigma u_i)> u_i / (2 sigma), u_i ~ N(0, I). No gradient of the
  model enters it, so gradients that are shattered (oscillating faster
  than `sigma`), saturated or lie cost it nothing; the model's own noise
  only adds variance. Use it as a gradient attack's `gradient_fn`.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    sigma: the smoothing s.d. per input value, > 0 (in [0, 1] image units;
      a fraction of the attack's radius).
    pairs: antithetic pairs of queries per gradient, >= 1.
    tile: directions drawn on a grid `tile` times coarser than the image
      and repeated over each tile x tile block (Ilyas et al., 2019: nearby
      pixels' gradients agree), so the estimate has H W C / tile^2
      unknowns instead of H W C; 1 draws every pixel.
    max_images: most images per call of `logits_fn` (the pairs run in
      calls of at most this many shifted images, at least one pair each):
      the cap that keeps memory bounded.

  Returns:
    images `[B, H, W, C]` -> logits `[B, K]`, differentiable.
  """
  if sigma <= 0 or pairs < 1 or tile < 1 or max_images < 1:
    raise ValueError(f'finite_differences needs sigma > 0, pairs >= 1, '
                     f'tile >= 1 and max_images >= 1 (got {sigma}, {pairs}, '
                     f'{tile}, {max_images}).')

  @tf.custom_gradient
  def fn(x):
    logits = logits_fn(x)

    def grad(upstream, variables=None):  # `[B, K]` -> `[B, H, W, C]`.
      size = tf.shape(x)
      per_call = tf.maximum(1, max_images // (2 * size[0]))

      def chunk(done, total):  # `n` more pairs, summed into `total`.
        n = tf.minimum(per_call, pairs - done)
        coarse = tf.stack([n * size[0], -(-size[1] // tile),
                           -(-size[2] // tile), size[3]])
        u = tf.random.normal(coarse, dtype=x.dtype)
        if tile > 1:  # Each draw over a tile x tile block, cut to the image.
          u = tf.repeat(tf.repeat(u, tile, axis=1), tile, axis=2)
          u = u[:, :size[1], :size[2]]
        u = tf.reshape(u, tf.concat([[n], size], 0))
        shifted = tf.concat([x[None] + sigma * u, x[None] - sigma * u], 0)
        flat = tf.reshape(shifted, tf.concat([[-1], size[1:]], 0))
        values = tf.reshape(tf.stop_gradient(logits_fn(flat)),
                            tf.concat([[2, n], tf.shape(logits)], 0))
        slope = tf.reduce_sum(upstream[None] * (values[0] - values[1]),
                              axis=-1) / (2.0 * sigma)  # `[n, B]`.
        along = tf.reshape(slope, tf.concat(
            [tf.shape(slope), tf.ones([tf.rank(x) - 1], tf.int32)], 0))
        return done + n, total + tf.reduce_sum(along * u, axis=0)

      _, total = tf.while_loop(lambda done, _: done < pairs, chunk,
                               (tf.constant(0), tf.zeros_like(x)))
      estimate = total / float(pairs)
      if variables is None:
        return estimate
      # The model's weights (a Keras model's variables) get none.
      return estimate, [tf.zeros_like(v) for v in variables]

    return logits, grad

  # Autograph would unwrap the custom gradient into (value, grad) pairs.
  return tf.autograph.experimental.do_not_convert(fn)

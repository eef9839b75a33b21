"""Stochastic Local Winner-Takes-All activations (Panousis et al., 2019, 2021).

Channel layout. The C channels of a response `[..., C]` form K = C / U
blocks of U competitors: competitor u of block k is channel `u * K + k`
(for U = 2, channel k competes with channel k + C/2). A reshape to
`[..., U, K]` is free in channels-last memory, and for U = 2 the two
competitors are the two contiguous halves of the channel axis, which on a
CPU is about twice as fast as pairing channels 2k and 2k + 1 on an innermost
size-2 axis. IBP block utilities (`ibp.IBPMask`) use the same layout. The
references pair consecutive channels; checkpoints made with that layout
(before `LAYOUT_VERSION` 2) are refused by `layout.check_checkpoint`, since
their weights would load but mean something else.

The competition. In each block, at every position, a winner is drawn from a
relaxed one-hot categorical distribution (Gumbel-softmax, temperature T)
whose logits are the block's own responses h, and the output is
h * relaxed one-hot: the winner keeps its raw value, the losers are (nearly)
silenced. Sampling stays on at test time, at a lower temperature (0.01 by
default): the randomness is part of the defense.

Two paths compute it, equal in distribution (tests/test_lwta.py):
  * U = 2, the common case: the Gumbel-softmax over a pair is
    s = sigmoid((h_a - h_b + L) / T) with L ~ Logistic(0, 1) (the difference
    of two Gumbels), outputs (h_a * s, h_b * (1 - s)); one fused op with a
    hand-written gradient, and the winner KL computed in the same op;
  * any U: Gumbel noise and a softmax over the competitor axis of
    `[..., U, K]`, differentiated by TensorFlow.
At test time the layer honours `surrogate.current()` ('expected': each unit
times its winning probability, softmax of its block; 'straight_through':
sampled forward, the expectation's gradient backward).

The winner KL. Each training call adds, with `add_loss`, the KL divergence
of the winner posterior q = softmax(h) (per block and position) from the
uniform prior 1/U, summed over the example's blocks and positions and
averaged over the batch: a per-example (local) term of the ELBO. The
training loss weights it by `--lwta_kl_weight` (training/losses.py says
exactly how it enters the objective).
"""

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

from tf_slwta.layers import randomness
from tf_slwta.layers import surrogate

# 1: competitors were consecutive channels (the references' layout).
# 2: competitor u of block k is channel u * K + k (this module).
LAYOUT_VERSION = 2
# Name of the checkpoint entry that records LAYOUT_VERSION.
LAYOUT_CHECKPOINT_KEY = 'channel_layout'


def sampling_at_training_temperature():
  """Within the block, LWTA layers called with training=False sample at
  their training temperature instead of the test one: the surrogate mode
  'training_temperature' (`surrogate.gradient_surrogate`).

  For the attacks of adversarial training (`defenses/mixture.py`,
  `--mixture_gradient=training_temperature`): at the test temperature 0.01
  a pass's input gradient is the 0/1 winner mask with rare spikes; at the
  training temperature it is informative (BENCHMARKS.md, "Adversarial
  training of LWTA models"). BatchNorm and the KL stay in inference mode.
  It is read when a layer's call is traced.
  """
  return surrogate.gradient_surrogate('training_temperature')


def categorical_kl_from_uniform(logits: tf.Tensor, axis: int = -1) -> tf.Tensor:
  """KL(softmax(logits) || uniform) over `axis`, closed form.

  Args:
    logits: float `[..., U, ...]`.
    axis: the competitor axis.

  Returns:
    float, `logits` without `axis`, >= 0: sum_u q_u log q_u + log U.
  """
  log_q = tf.nn.log_softmax(logits, axis=axis)
  units = tf.cast(tf.shape(logits)[axis], logits.dtype)
  return tf.reduce_sum(tf.exp(log_q) * log_q, axis=axis) + tf.math.log(units)


def _open_uniform(shape, seed, dtype):
  """Uniform draws in the open interval (0, 1), from a stateless seed.

  TensorFlow's uniform floats are the grid k * eps, k = 0 .. 1/eps - 1
  (eps: the dtype's machine epsilon). Shifting by eps / 2 gives the grid's
  midpoints, symmetric about 1/2 and never 0 or 1, in one addition instead
  of `stateless_uniform`'s scaling to [minval, maxval) (two passes over
  memory). Returns (u, 1 - u), both exact in the dtype.
  """
  key, counter, alg = tf.raw_ops.StatelessRandomGetKeyCounterAlg(seed=seed)
  u = tf.raw_ops.StatelessRandomUniformV2(shape=shape, key=key,
                                          counter=counter, alg=alg,
                                          dtype=dtype)
  half = 0.5 * float(ml_dtypes.finfo(dtype.as_numpy_dtype).eps)
  return u + half, (1.0 - half) - u


def logistic_noise(shape, seed, dtype=tf.float32) -> tf.Tensor:
  """Logistic(0, 1) draws, log(u / (1 - u)), from a stateless seed.

  One log instead of log(u) - log1p(-u): a quarter faster on a CPU; u is
  on the midpoints of the dtype's uniform grid (`_open_uniform`), where 1 - u
  is exact, so the two agree.

  Args:
    shape: int vector, the output shape.
    seed: int `[2]`, a stateless seed.
    dtype: a float dtype.

  Returns:
    float `shape`, |values| < log(2 / eps) (about 16.6 in float32).
  """
  dtype = tf.as_dtype(dtype)
  u, one_minus_u = _open_uniform(shape, seed, dtype)
  return tf.math.log(u / one_minus_u)


def gumbel_noise(shape, seed, dtype=tf.float32) -> tf.Tensor:
  """Gumbel(0, 1) draws, -log(-log(u)), from a stateless seed.

  Args:
    shape: int vector, the output shape.
    seed: int `[2]`, a stateless seed.
    dtype: a float dtype.

  Returns:
    float `shape`, finite.
  """
  dtype = tf.as_dtype(dtype)
  u, _ = _open_uniform(shape, seed, dtype)
  return -tf.math.log(-tf.math.log(u))


def _per_example_sum(values: tf.Tensor) -> tf.Tensor:
  """`[B, ...]` -> `[B]`, the sum over everything but the batch axis."""
  return tf.reduce_sum(tf.reshape(values, [tf.shape(values)[0], -1]), axis=-1)


def pair_lwta(x: tf.Tensor, noise, temperature: float, with_kl: bool):
  """The U = 2 fast path: one fused op with its own gradient.

  Channel k competes with channel k + C/2. With d = h_a - h_b,
    s = sigmoid((d + noise) / T)   (noise None: s = [d >= 0], hard winners)
    outputs x * [s, 1 - s],
    winner KL per element = log 2 - softplus(d) + sigmoid(d) * d
  (= KL(Bernoulli(sigmoid(d)) || Bernoulli(1/2))).

  Written for few passes over memory (each elementwise op on a CPU is
  memory-bound): the outputs are x times one mask [s, 1 - s]; the KL is
  computed from m = sigmoid(|d|) (below) rather than softplus, which
  TensorFlow's CPU kernel evaluates about three times slower than sigmoid;
  the gradient uses TensorFlow's `SigmoidGrad` for both sigmoids
  (BENCHMARKS.md, "training-step overhead").

  Args:
    x: float `[B, ..., C]`, C even.
    noise: float `[B, ..., C/2]` Logistic(0, 1) draws, or None for hard
      argmax winners (their gradient is the 0/1 mask).
    temperature: T > 0 (unused when noise is None).
    with_kl: also return the winner KL summed per example.

  Returns:
    (outputs `[B, ..., C]`, KL `[B]` >= 0 up to float rounding, or None).
  """
  inv_t = 1.0 / temperature
  rank = len(x.shape)

  @tf.custom_gradient
  def op(x):
    a, b = tf.split(x, 2, axis=-1)
    d = a - b
    if noise is None:
      s = tf.cast(d >= 0, x.dtype)
    else:
      s = tf.sigmoid((d + noise) * inv_t)
    mask = tf.concat([s, 1.0 - s], axis=-1)
    out = x * mask
    m = kl = None
    if with_kl:
      # KL is even in d. With m = sigmoid(|d|) (the larger response's
      # winning probability), KL = log 2 + log m - (1 - m) |d|: log of a
      # value in [1/2, 1], so no softplus and no cancellation; within 1e-6
      # of the float64 value for any d (tests/test_lwta.py). Since
      # m (1 - m) = q (1 - q), the gradient d q (1 - q) uses m too.
      abs_d = tf.abs(d)
      m = tf.sigmoid(abs_d)
      kl = _per_example_sum(tf.math.log(m) - (abs_d - m * abs_d))
      kl += np.log(2.0) * tf.cast(tf.reduce_prod(tf.shape(d)[1:]), x.dtype)

    def grad(g, g_kl=None):
      dx = g * mask
      r = None
      if noise is not None:  # d out / d d through s.
        ga, gb = tf.split(g * x, 2, axis=-1)
        r = tf.raw_ops.SigmoidGrad(y=s, dy=(ga - gb) * inv_t)
      if with_kl and g_kl is not None:  # d KL / d d = d m (1 - m).
        r_kl = tf.raw_ops.SigmoidGrad(
            y=m, dy=d * tf.reshape(g_kl, [-1] + [1] * (rank - 1)))
        r = r_kl if r is None else r + r_kl
      if r is not None:
        dx += tf.concat([r, -r], axis=-1)
      return dx

    if with_kl:
      return (out, kl), grad
    return out, grad

  if with_kl:
    return op(x)
  return op(x), None


def general_lwta(x: tf.Tensor, competitors: int, noise, temperature: float,
                 with_kl: bool):
  """The path for any U: Gumbel-softmax over the competitor axis.

  Args:
    x: float `[B, ..., C]`, C = U * K; competitor u of block k is channel
      u * K + k.
    competitors: U >= 2.
    noise: float Gumbel(0, 1) draws `[B, ..., U, K]`, or None for hard
      argmax winners.
    temperature: T > 0 (unused when noise is None).
    with_kl: also return the winner KL summed per example.

  Returns:
    (outputs `[B, ..., C]`, KL `[B]` >= 0 or None).
  """
  shape = tf.shape(x)
  blocks = to_blocks(x, competitors)
  if noise is None:
    rank = len(blocks.shape)
    winners = tf.one_hot(tf.argmax(blocks, axis=-2), competitors,
                         axis=rank - 2, dtype=x.dtype)
  else:
    winners = tf.nn.softmax((blocks + noise) / temperature, axis=-2)
  out = tf.reshape(blocks * winners, shape)
  kl = None
  if with_kl:
    kl = _per_example_sum(categorical_kl_from_uniform(blocks, axis=-2))
  return out, kl


def to_blocks(x: tf.Tensor, competitors: int) -> tf.Tensor:
  """`[..., C]` -> `[..., U, K]` (free in memory): [u, k] is channel u*K + k."""
  channels = x.shape[-1]
  return tf.reshape(x, tf.concat(
      [tf.shape(x)[:-1], [competitors, channels // competitors]], 0))


def expected_output(x: tf.Tensor, competitors: int) -> tf.Tensor:
  """Each unit times its probability of winning (softmax of its block).

  The Gumbel-softmax argmax is Categorical(softmax(h)) at any temperature,
  so this is the expectation of the hard-winner output. `[..., C]` in and
  out.
  """
  if competitors == 2:
    a, b = tf.split(x, 2, axis=-1)
    q = tf.sigmoid(a - b)
    return tf.concat([a * q, b * (1.0 - q)], axis=-1)
  blocks = to_blocks(x, competitors)
  return tf.reshape(blocks * tf.nn.softmax(blocks, axis=-2), tf.shape(x))


@keras.saving.register_keras_serializable(package='tf_slwta')
class LWTA(keras.layers.Layer):
  """Stochastic LWTA activation: `[B, ..., C]` -> `[B, ..., C]`, C % U == 0.

  Args:
    competitors: units U per block, >= 2 (U = 2 takes the fused fast path).
    temperature: Gumbel-softmax temperature in training, > 0 (0.67).
    test_temperature: temperature at test time, > 0 (0.01); sampling stays on.
    deterministic: no sampling; the block's largest response wins (hard
      argmax), in training and at test. The KL is still added in training.
    seed: seed of the layer's random stream, or None.
  """

  def __init__(self, competitors: int = 2, temperature: float = 0.67,
               test_temperature: float = 0.01, deterministic: bool = False,
               seed=None, **kwargs):
    super().__init__(**kwargs)
    if int(competitors) != competitors or competitors < 2:
      raise ValueError(f'competitors must be an integer >= 2, got '
                       f'{competitors}.')
    for name, value in (('temperature', temperature),
                        ('test_temperature', test_temperature)):
      if not value > 0:
        raise ValueError(f'{name} must be > 0, got {value}; use '
                         f'deterministic=True for a hard winner.')
    self.competitors = int(competitors)
    self.temperature = float(temperature)
    self.test_temperature = float(test_temperature)
    self.deterministic = bool(deterministic)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None or channels % self.competitors:
      raise ValueError(
          f'{self.name}: {channels} channels do not split into blocks of '
          f'competitors={self.competitors}; use a channel count that is a '
          f'multiple of {self.competitors}.')

  def blocks(self, x: tf.Tensor) -> tf.Tensor:
    """`[..., C]` -> `[..., K, U]`: each block's competitors on the last axis."""
    rank = len(x.shape)
    perm = list(range(rank - 1)) + [rank, rank - 1]
    return tf.transpose(to_blocks(x, self.competitors), perm)

  def winners(self, blocks: tf.Tensor, training) -> tf.Tensor:
    """Relaxed one-hot winners `[..., U]` of responses `[..., U]` (any layout).

    For inspection (figures, tests), not the layer's own hot path.
    """
    if self.deterministic:
      return tf.one_hot(tf.argmax(blocks, axis=-1), self.competitors,
                        dtype=blocks.dtype)
    temperature = self.temperature if training else self.test_temperature
    noise = gumbel_noise(tf.shape(blocks),
                         randomness.next_seed(self.seed_generator),
                         blocks.dtype)
    return tf.nn.softmax((blocks + noise) / temperature, axis=-1)

  def _sample(self, x, training, with_kl, temperature=None):
    """(sampled outputs `[..., C]`, per-example KL `[B]` or None), at
    `temperature` (default: the training or the test one)."""
    if temperature is None:
      temperature = self.temperature if training else self.test_temperature
    noise = None
    half = self.competitors == 2
    if not self.deterministic:
      seed = randomness.next_seed(self.seed_generator)
      shape = tf.shape(x)
      if half:
        noise = logistic_noise(tf.concat([shape[:-1], [x.shape[-1] // 2]], 0),
                               seed, x.dtype)
      else:
        noise = gumbel_noise(tf.shape(to_blocks(x, self.competitors)), seed,
                             x.dtype)
    if half:
      return pair_lwta(x, noise, temperature, with_kl)
    return general_lwta(x, self.competitors, noise, temperature, with_kl)

  def call(self, inputs, training=None):
    if training:
      outputs, kl = self._sample(inputs, True, with_kl=True)
      self.add_loss(tf.reduce_mean(kl))
      return outputs
    mode = surrogate.current()
    if mode == 'sample':
      return self._sample(inputs, False, with_kl=False)[0]
    if mode == 'training_temperature':
      return self._sample(inputs, False, False, self.temperature)[0]
    if mode == 'soft_temperature':
      soft = float(np.sqrt(self.temperature * self.test_temperature))
      return self._sample(inputs, False, False, soft)[0]
    expected = expected_output(inputs, self.competitors)
    if mode == 'expected':
      return expected
    return surrogate.straight_through(
        self._sample(inputs, False, with_kl=False)[0], expected)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'competitors': self.competitors,
            'temperature': self.temperature,
            'test_temperature': self.test_temperature,
            'deterministic': self.deterministic, 'seed': self.seed}


def lwta_layers(model: keras.Model) -> list:
  """The model's `LWTA` layers, in graph order."""
  return [l for l in model._flatten_layers() if isinstance(l, LWTA)]  # pylint: disable=protected-access

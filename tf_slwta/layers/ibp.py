"""Indian Buffet Process priors over LWTA blocks (Panousis et al., 2019).

A layer with an IBP prior learns which of its K blocks to keep. Each block
(in a convolution) or each (input, block) pair (in a dense layer) has a
utility z in {0, 1} that masks the weights feeding the block:

  sticks    v_k ~ Kumaraswamy(a_k, b_k)   (posterior; prior Beta(alpha, 1))
  prior     pi_k = v_1 * ... * v_k         (stick breaking)
  utility   z ~ Bernoulli(sigmoid(t))      (posterior; prior Bernoulli(pi))

In training z is drawn from its binary-concrete relaxation
(`tfp.distributions.RelaxedBernoulli`) and the layer adds, with `add_loss`,
KL(Kumaraswamy || Beta(alpha, 1)) in closed form plus the Bernoulli KL of the
utilities against the sampled stick-breaking probabilities. At test time z is
sigmoid(t), set to 0 where it falls under `threshold`: those blocks are
pruned. Parameters are softplus-parameterized and initialized as the
reference implementation: a = softplus(2), b = softplus(0.5453) ~ 1,
t ~ U(0.1, 1).
"""

import numpy as np
import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta.layers import randomness
from tf_slwta.layers.noise import finish_linear


_EULER = 0.5772156649015329
_EPS = 1e-6


def kumaraswamy_beta_kl(a: tf.Tensor, b: tf.Tensor, alpha: float) -> tf.Tensor:
  """KL(Kumaraswamy(a, b) || Beta(alpha, 1)), closed form, elementwise.

  Nalisnick & Smyth (2017), with the prior's second parameter 1, which makes
  their infinite series vanish:
    (a - alpha) / a * (-gamma - psi(b) - 1 / b) + log(a b) - log(alpha)
    - (b - 1) / b.

  Args:
    a, b: positive Kumaraswamy parameters, any matching shapes.
    alpha: positive prior concentration.

  Returns:
    float, same shape as a, >= 0.
  """
  return ((a - alpha) / a * (-_EULER - tf.math.digamma(b) - 1.0 / b)
          + tf.math.log(a * b) - np.log(alpha) - (b - 1.0) / b)


def bernoulli_kl(q: tf.Tensor, p: tf.Tensor) -> tf.Tensor:
  """KL(Bernoulli(q) || Bernoulli(p)) elementwise (TFP's registered KL).

  Args:
    q, p: probabilities, clipped into (0, 1) so the KL stays finite.
  """
  clip = lambda v: tf.clip_by_value(v, _EPS, 1 - _EPS)
  return tfp.distributions.kl_divergence(
      tfp.distributions.Bernoulli(probs=clip(q)),
      tfp.distributions.Bernoulli(probs=clip(p)))


class _IBPMixin:
  """Utilities, sticks and their KL terms shared by IBPDense and IBPConv2D."""

  def _init_ibp(self, competitors, prior_alpha, temperature, threshold, seed):
    if int(competitors) != competitors or competitors < 1:
      raise ValueError(f'competitors must be an integer >= 1, got {competitors}.')
    if not prior_alpha > 0 or not temperature > 0 or not 0 <= threshold < 1:
      raise ValueError('prior_alpha and temperature must be > 0 and '
                       'threshold in [0, 1).')
    self.competitors = int(competitors)
    self.prior_alpha = float(prior_alpha)
    self.ibp_temperature = float(temperature)
    self.threshold = float(threshold)
    self.ibp_seed = seed
    self.ibp_seed_generator = keras.random.SeedGenerator(seed)

  def _build_ibp(self, outputs: int, utility_shape):
    if outputs % self.competitors:
      raise ValueError(f'{self.name}: {outputs} outputs do not split into '
                       f'blocks of competitors={self.competitors}.')
    blocks = outputs // self.competitors
    self.blocks = blocks
    self.stick_a = self.add_weight(
        name='ibp_stick_a', shape=(blocks,),
        initializer=keras.initializers.Constant(2.0))
    self.stick_b = self.add_weight(
        name='ibp_stick_b', shape=(blocks,),
        initializer=keras.initializers.Constant(0.5453))
    self.utility_logits = self.add_weight(
        name='ibp_utility_logits', shape=tuple(utility_shape) + (blocks,),
        initializer=keras.initializers.RandomUniform(0.1, 1.0))

  def utilities(self) -> tf.Tensor:
    """Test-time utilities sigmoid(t), zero where under the threshold."""
    probs = tf.sigmoid(self.utility_logits)
    return tf.where(probs > self.threshold, probs, tf.zeros_like(probs))

  def pruned_fraction(self) -> float:
    """Share of utilities (blocks, or input-block pairs) pruned at test time."""
    probs = tf.sigmoid(self.utility_logits)
    return float(tf.reduce_mean(tf.cast(probs <= self.threshold, tf.float32)))

  def _mask(self, training) -> tf.Tensor:
    """Utilities expanded over each block's U outputs: `[..., K * U]`."""
    if training:
      seed = randomness.next_seed(self.ibp_seed_generator)
      z = tfp.distributions.RelaxedBernoulli(
          self.ibp_temperature, logits=self.utility_logits).sample(seed=seed)
      self.add_loss(self._kl(seed))
    else:
      z = self.utilities()
    return tf.repeat(z, self.competitors, axis=-1)

  def _kl(self, seed) -> tf.Tensor:
    a = tf.nn.softplus(self.stick_a)
    b = tf.nn.softplus(self.stick_b)
    sticks = tfp.distributions.Kumaraswamy(a, b).sample(
        seed=seed + 1)  # A stream apart from the utilities' draw.
    prior_pi = tf.math.cumprod(tf.clip_by_value(sticks, _EPS, 1.0), axis=-1)
    kl_z = tf.reduce_sum(bernoulli_kl(tf.sigmoid(self.utility_logits),
                                      prior_pi))
    kl_sticks = tf.reduce_sum(kumaraswamy_beta_kl(a, b, self.prior_alpha))
    return kl_z + kl_sticks

  def _ibp_config(self):
    return {'competitors': self.competitors, 'prior_alpha': self.prior_alpha,
            'ibp_temperature': self.ibp_temperature,
            'threshold': self.threshold, 'ibp_seed': self.ibp_seed}

  # Keras' Dense and Conv layers save only kernel and bias; save everything.
  def save_own_variables(self, store):
    keras.layers.Layer.save_own_variables(self, store)

  def load_own_variables(self, store):
    keras.layers.Layer.load_own_variables(self, store)


@keras.saving.register_keras_serializable(package='tf_slwta')
class IBPDense(_IBPMixin, keras.layers.Dense):
  """Dense layer whose (input, block) weights are masked by IBP utilities.

  `[B, D]` -> `[B, units]`; units divisible by `competitors`. Usually
  followed by an `LWTA` activation with the same competitors.

  Args:
    units: outputs, a multiple of competitors.
    competitors: U, outputs per block.
    prior_alpha: alpha of the Beta(alpha, 1) stick prior (1 as the reference).
    ibp_temperature: binary-concrete temperature in training (0.67).
    threshold: test-time utilities at or under it are pruned (0.01).
    ibp_seed: seed of the layer's random stream.
    Other arguments as `keras.layers.Dense`.
  """

  def __init__(self, units, competitors: int = 2, prior_alpha: float = 1.0,
               ibp_temperature: float = 0.67, threshold: float = 0.01,
               ibp_seed=None, **kwargs):
    super().__init__(units, **kwargs)
    self._init_ibp(competitors, prior_alpha, ibp_temperature, threshold,
                   ibp_seed)

  def build(self, input_shape):
    super().build(input_shape)
    self._build_ibp(self.units, (input_shape[-1],))

  def call(self, inputs, training=None):
    return finish_linear(
        self, tf.matmul(inputs, self.kernel * self._mask(training)))

  def get_config(self):
    return {**super().get_config(), **self._ibp_config()}


@keras.saving.register_keras_serializable(package='tf_slwta')
class IBPConv2D(_IBPMixin, keras.layers.Conv2D):
  """Conv2D whose output blocks are masked by IBP utilities (one per block).

  `[B, H, W, C]` -> Conv2D's output; filters divisible by `competitors`.
  Arguments as `IBPDense`, plus those of `keras.layers.Conv2D`.
  """

  def __init__(self, filters, kernel_size, competitors: int = 2,
               prior_alpha: float = 1.0, ibp_temperature: float = 0.67,
               threshold: float = 0.01, ibp_seed=None, **kwargs):
    super().__init__(filters, kernel_size, **kwargs)
    self._init_ibp(competitors, prior_alpha, ibp_temperature, threshold,
                   ibp_seed)

  def build(self, input_shape):
    super().build(input_shape)
    self._build_ibp(self.filters, ())

  def call(self, inputs, training=None):
    return finish_linear(
        self, self.convolution_op(inputs, self.kernel * self._mask(training)))

  def get_config(self):
    return {**super().get_config(), **self._ibp_config()}


def ibp_layers(model: keras.Model) -> list:
  """The model's layers with IBP priors (`IBPDense`, `IBPConv2D`), in order."""
  return [l for l in model._flatten_layers() if isinstance(l, _IBPMixin)]  # pylint: disable=protected-access


def pruned_fractions(model: keras.Model) -> dict:
  """{layer name: pruned share} for every IBP layer, plus 'all' (weighted)."""
  layers = ibp_layers(model)
  result = {l.name: l.pruned_fraction() for l in layers}
  sizes = [int(np.prod(l.utility_logits.shape)) for l in layers]
  if layers:
    result['all'] = float(np.dot([result[l.name] for l in layers], sizes)
                          / sum(sizes))
  return result


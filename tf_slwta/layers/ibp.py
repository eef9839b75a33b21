"""Indian Buffet Process priors over LWTA blocks (Panousis et al., 2019).

`IBPMask` learns which of the K blocks of a response `[..., C]` to keep
(K = C / U; block k is channels k, k + K, ..., k + (U - 1) K, the layout of
`lwta.LWTA`). Each block has a utility z_k in {0, 1} that multiplies all
its channels:

  sticks    v_k ~ Kumaraswamy(a_k, b_k)   (posterior; prior Beta(alpha, 1))
  prior     pi_k = v_1 * ... * v_k         (stick breaking)
  utility   z_k ~ Bernoulli(sigmoid(t_k))  (posterior; prior Bernoulli(pi_k))

In training z is drawn from its binary-concrete relaxation (temperature
0.67) and the layer adds, with `add_loss`, the global KL term of the ELBO:
KL(Kumaraswamy || Beta(alpha, 1)) in closed form plus the Bernoulli KL of the
utilities against one draw of the stick-breaking prior (a one-sample
Monte Carlo estimate of the expectation over the sticks). The training loss
divides it by the number of training examples and weights it by
`--ibp_kl_weight` (training/losses.py). At test time z is sigmoid(t), set
to exactly 0 where it is at or under `threshold`: those blocks are pruned.

As the TF reference (konpanousis/adversarial_ecoc_lwta): a = softplus(2),
b = softplus(0.5453) ~ 1 (raw parameters, softplus-parameterized),
t ~ U(4, 5) (every block starts almost surely on), binary concrete at 0.67,
prune at sigmoid(t) <= 0.01, and the variational parameters (`VARIABLE_NAMES`)
trained by their own optimizer without weight decay
(training/variational.py). Deliberate differences, and why:
  * The utility multiplies the block's output, placed by the models after
    the block's normalization (or its bias) and before its activation;
    the reference multiplies the kernel, so a pruned block still outputs its
    bias, and after a BatchNorm the utility's scale is divided out and a
    "pruned" block outputs BatchNorm's shift. Here a pruned block's outputs
    are exact zeros, so it can be removed from the network.
  * Dense layers get one utility per block, like convolutions; the
    reference has one per (input, block) pair. Per-block utilities prune
    units (structured pruning, a smaller and faster network at test time);
    per-pair ones only zero single weights.
  * The utility KL is the full Bernoulli KL, q log(q / pi) + (1 - q)
    log((1 - q) / (1 - pi)); the reference keeps only the first term. It is
    computed in logs (log pi = cumsum(log v)), as the reference's
    log(pi + 1e-8) also lets the gradient through: a prior pi clipped
    into [1e-6, 1 - 1e-6] gave most sticks of a wide layer no gradient.
  * At test time z is the utility's mean sigmoid(t) instead of a draw at
    temperature 0.01: which blocks exist is not part of the defense's
    randomness (the LWTA winners are), and a pruned network stays one
    fixed, smaller network.
  * The reference's utility blocks (`tf.tile(z, [U])`) and its LWTA blocks
    (consecutive channels) disagree on which channels form a block; here
    both use the layout above.
"""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta.layers import lwta
from tf_slwta.layers import randomness

_EULER = 0.5772156649015329

# Names of the variational parameters (on their own optimizer, no decay).
VARIABLE_NAMES = ('ibp_stick_a', 'ibp_stick_b', 'ibp_utility_logits')


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


def bernoulli_kl_logits(logits: tf.Tensor, log_p: tf.Tensor) -> tf.Tensor:
  """KL(Bernoulli(sigmoid(logits)) || Bernoulli(p)) elementwise, in logs.

  q log(q / p) + (1 - q) log((1 - q) / (1 - p)) with log q and log(1 - q)
  from the logits and log(1 - p) = log1mexp(log p): finite and with a
  gradient for any p in (0, 1), however small (clipping p into [1e-6,
  1 - 1e-6] would leave a clipped p with no gradient).

  Args:
    logits: the posterior's logits t, any shape.
    log_p: log of the prior's probability, < 0, the same shape.

  Returns:
    float, the shape of `logits`, >= 0.
  """
  q = tf.sigmoid(logits)
  # p = 1 exactly (a stick drawn as 1.0) would make log(1 - p) -inf.
  log_p = tf.minimum(log_p, -1e-7)
  log_one_minus_p = tfp.math.log1mexp(log_p)
  return (q * (tf.math.log_sigmoid(logits) - log_p) +
          (1.0 - q) * (tf.math.log_sigmoid(-logits) - log_one_minus_p))


@keras.saving.register_keras_serializable(package='tf_slwta')
class IBPMask(keras.layers.Layer):
  """IBP block utilities: `[B, ..., C]` -> `[B, ..., C]`, each block scaled.

  Put it where a block's output is final (after its BatchNorm or bias),
  before the activation, so a pruned block outputs exact zeros.

  Args:
    competitors: U, channels per block (the LWTA's competitors; with ReLU
      the blocks are just groups of U channels), >= 1.
    prior_alpha: alpha of the Beta(alpha, 1) stick prior (1, the reference).
    temperature: binary-concrete temperature of z in training (0.67).
    threshold: test-time utilities at or under it are pruned (0.01).
    utility_init: (low, high) of the uniform initial utility logits t
      ((4, 5), the reference: sigmoid(t) ~ 0.98-0.99).
    seed: seed of the layer's random stream, or None.
  """

  def __init__(self, competitors: int = 2, prior_alpha: float = 1.0,
               temperature: float = 0.67, threshold: float = 0.01,
               utility_init=(4.0, 5.0), seed=None, **kwargs):
    super().__init__(**kwargs)
    if int(competitors) != competitors or competitors < 1:
      raise ValueError(f'competitors must be an integer >= 1, got '
                       f'{competitors}.')
    if not prior_alpha > 0 or not temperature > 0 or not 0 <= threshold < 1:
      raise ValueError('prior_alpha and temperature must be > 0 and '
                       'threshold in [0, 1).')
    low, high = (float(v) for v in utility_init)
    if not low <= high:
      raise ValueError(f'utility_init must be (low, high) with low <= high, '
                       f'got {utility_init}.')
    self.competitors = int(competitors)
    self.prior_alpha = float(prior_alpha)
    self.temperature = float(temperature)
    self.threshold = float(threshold)
    self.utility_init = (low, high)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None or channels % self.competitors:
      raise ValueError(f'{self.name}: {channels} channels do not split into '
                       f'blocks of competitors={self.competitors}.')
    self.blocks = channels // self.competitors
    self.stick_a = self.add_weight(
        name='ibp_stick_a', shape=(self.blocks,),
        initializer=keras.initializers.Constant(2.0))
    self.stick_b = self.add_weight(
        name='ibp_stick_b', shape=(self.blocks,),
        initializer=keras.initializers.Constant(0.5453))
    self.utility_logits = self.add_weight(
        name='ibp_utility_logits', shape=(self.blocks,),
        initializer=keras.initializers.RandomUniform(*self.utility_init))

  def utilities(self) -> tf.Tensor:
    """Test-time utilities `[K]`: sigmoid(t), exactly 0 at or under threshold."""
    probs = tf.sigmoid(self.utility_logits)
    return tf.where(probs > self.threshold, probs, tf.zeros_like(probs))

  def kept(self) -> np.ndarray:
    """bool `[K]`: the blocks that survive pruning."""
    return (tf.sigmoid(self.utility_logits) > self.threshold).numpy()

  def pruned_fraction(self) -> float:
    """Share of blocks pruned at test time, in [0, 1]."""
    return float(1.0 - np.mean(self.kept()))

  def kl(self) -> tf.Tensor:
    """The layer's global KL (sticks + utilities), a float32 scalar >= 0.

    Draws one stick-breaking prior (its own seed from the layer's stream).
    """
    a = tf.nn.softplus(self.stick_a)
    b = tf.nn.softplus(self.stick_b)
    sticks = tfp.distributions.Kumaraswamy(a, b).sample(
        seed=randomness.next_seed(self.seed_generator))
    # log pi_k = sum_{j <= k} log v_j: the 100th stick's prior is far below
    # any float's smallest step above 0, and its log is not; no clip, so
    # every stick gets the KL's gradient.
    log_pi = tf.math.cumsum(tf.math.log(sticks))
    kl_z = tf.reduce_sum(bernoulli_kl_logits(self.utility_logits, log_pi))
    return kl_z + tf.reduce_sum(kumaraswamy_beta_kl(a, b, self.prior_alpha))

  def call(self, inputs, training=None):
    if training:
      noise = lwta.logistic_noise(
          tf.shape(self.utility_logits),
          randomness.next_seed(self.seed_generator), inputs.dtype)
      z = tf.sigmoid((self.utility_logits + noise) / self.temperature)
      self.add_loss(self.kl())
    else:
      z = self.utilities()
    # Block k's utility on channels k, k + K, ... (the LWTA layout).
    return inputs * tf.tile(tf.cast(z, inputs.dtype), [self.competitors])

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), 'competitors': self.competitors,
            'prior_alpha': self.prior_alpha, 'temperature': self.temperature,
            'threshold': self.threshold,
            'utility_init': list(self.utility_init), 'seed': self.seed}


def ibp_layers(model: keras.Model) -> list:
  """The model's IBP layers (`IBPMask`), in graph order."""
  return [l for l in model._flatten_layers() if isinstance(l, IBPMask)]  # pylint: disable=protected-access


def pruned_fractions(model: keras.Model) -> dict:
  """{layer name: pruned share of its blocks} per IBP layer, plus 'all'.

  'all' is the share of all the model's IBP blocks that are pruned.
  """
  layers = ibp_layers(model)
  result = {l.name: l.pruned_fraction() for l in layers}
  if layers:
    kept = np.concatenate([l.kept() for l in layers])
    result['all'] = float(1.0 - np.mean(kept))
  return result

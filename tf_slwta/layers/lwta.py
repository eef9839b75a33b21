"""Stochastic Local Winner-Takes-All activations (Panousis et al., 2019, 2021).

The C channels of a response are split into K = C / U blocks of U consecutive
channels (`[..., K, U]`). In each block, at every position, the units
compete: a winner is drawn from a relaxed one-hot categorical distribution
(Gumbel-softmax, `tfp.distributions.RelaxedOneHotCategorical`) whose logits
are the block's own responses, and the output is response x relaxed one-hot,
so the winner keeps its raw value and the losers are (nearly) silenced.
Sampling stays on at test time, with a lower temperature (0.01 by default):
the randomness is part of the defense. Adaptive attacks can ask for the
winner's expectation instead (`surrogate.gradient_surrogate`).

Each call in training adds, with `add_loss`, the KL divergence of the winner
distribution q = softmax(responses) from the uniform prior 1/U, summed over
blocks and positions and averaged over the batch. The training loss divides
it by the number of training examples (the ELBO, see training/losses.py).
"""

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta.layers import randomness
from tf_slwta.layers import surrogate


def categorical_kl_from_uniform(logits: tf.Tensor) -> tf.Tensor:
  """KL(softmax(logits) || uniform) over the last axis, closed form.

  Args:
    logits: float `[..., U]`.

  Returns:
    float `[...]`, >= 0: sum_u q_u log q_u + log U.
  """
  log_q = tf.nn.log_softmax(logits, axis=-1)
  units = tf.cast(tf.shape(logits)[-1], logits.dtype)
  return tf.reduce_sum(tf.exp(log_q) * log_q, axis=-1) + tf.math.log(units)


@keras.saving.register_keras_serializable(package='tf_slwta')
class LWTA(keras.layers.Layer):
  """Stochastic LWTA activation: `[..., C]` -> `[..., C]`, C divisible by U.

  Args:
    competitors: units U per block, >= 2.
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

  def winners(self, blocks: tf.Tensor, training) -> tf.Tensor:
    """Relaxed one-hot winners `[..., K, U]` of responses `[..., K, U]`."""
    if self.deterministic:
      return tf.one_hot(tf.argmax(blocks, axis=-1), self.competitors,
                        dtype=blocks.dtype)
    temperature = self.temperature if training else self.test_temperature
    seed = randomness.next_seed(self.seed_generator)
    return tfp.distributions.RelaxedOneHotCategorical(
        temperature, logits=blocks).sample(seed=seed)

  def call(self, inputs, training=None):
    shape = tf.shape(inputs)
    channels = inputs.shape[-1]
    blocks = tf.reshape(inputs, tf.concat(
        [shape[:-1], [channels // self.competitors, self.competitors]], 0))
    mode = 'sample' if training else surrogate.current()
    if mode == 'sample':
      outputs = blocks * self.winners(blocks, training)
    else:
      # The winner's expectation: each unit times its probability of
      # winning, softmax of the block (the Gumbel-softmax argmax is
      # Categorical(softmax(blocks)) at any temperature).
      expected = blocks * tf.nn.softmax(blocks, axis=-1)
      outputs = expected if mode == 'expected' else surrogate.straight_through(
          blocks * self.winners(blocks, training), expected)
    outputs = tf.reshape(outputs, shape)
    if training:
      kl = categorical_kl_from_uniform(blocks)
      per_example = tf.reduce_sum(tf.reshape(kl, [shape[0], -1]), axis=-1)
      self.add_loss(tf.reduce_mean(per_example))
    return outputs

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


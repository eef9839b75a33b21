"""Parametric Noise Injection (He, Rakin & Fan, CVPR 2019).

PNI adds Gaussian noise whose scale is learned: for a tensor v (weights or
activations), v + alpha * N(0, std(v)^2), where std(v) is taken over the
whole tensor and treated as a constant (no gradient flows through it), and
alpha is a trainable scale, initialized to 0.25, one per layer or one per
output channel. The noise is drawn anew on every call, in training and, by
default, at test time too (that is what makes the defense stochastic).

alpha should be excluded from weight decay (it would otherwise be pushed to
0): every alpha variable is named `ALPHA_NAME`.
"""

import keras
from keras import ops
import tensorflow as tf

from tf_slwta.layers import randomness
from tf_slwta.layers import surrogate

ALPHA_NAME = 'pni_alpha'


def _noise_scale(v: tf.Tensor) -> tf.Tensor:
  """std of all entries of `v`, as a constant for differentiation."""
  return tf.stop_gradient(tf.math.reduce_std(v))


def finish_linear(layer, outputs):
  """Adds a Dense/Conv layer's bias and applies its activation.

  For subclasses that compute their own kernel product (noisy or masked
  kernels) and then finish exactly as Keras does.
  """
  if layer.use_bias:
    outputs = outputs + layer.bias
  return layer.activation(outputs) if layer.activation is not None else outputs


class _AlphaMixin:
  """The learnable noise scale shared by the PNI layers."""

  def _init_pni(self, alpha_init: float, channelwise: bool,
                noise_at_test: bool, seed):
    if alpha_init < 0:
      raise ValueError(f'alpha_init must be >= 0, got {alpha_init}.')
    self.alpha_init = float(alpha_init)
    self.channelwise = bool(channelwise)
    self.noise_at_test = bool(noise_at_test)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)

  def _add_alpha(self, channels: int):
    self.alpha = self.add_weight(
        name=ALPHA_NAME, shape=(channels,) if self.channelwise else (),
        initializer=keras.initializers.Constant(self.alpha_init),
        trainable=True)

  def _noisy(self, v: tf.Tensor, training) -> tf.Tensor:
    """v + alpha * N(0, std(v)^2) when noise is on, else v."""
    if not (training or self.noise_at_test):
      return v
    mode = ('sample' if training else
            surrogate.current(surrogate.EXPECTATION_MODES))
    if mode == 'expected':  # The noise's mean.
      return v
    noise = tf.random.stateless_normal(
        tf.shape(v), randomness.next_seed(self.seed_generator), dtype=v.dtype)
    noisy = v + self.alpha * _noise_scale(v) * noise
    return noisy if mode == 'sample' else surrogate.straight_through(noisy, v)

  # Keras' Dense and Conv layers save only kernel and bias (their own
  # quantization-aware format); PNI layers save every variable, alpha too.
  def save_own_variables(self, store):
    keras.layers.Layer.save_own_variables(self, store)

  def load_own_variables(self, store):
    keras.layers.Layer.load_own_variables(self, store)

  def _pni_config(self):
    return {'alpha_init': self.alpha_init, 'channelwise': self.channelwise,
            'noise_at_test': self.noise_at_test, 'seed': self.seed}


@keras.saving.register_keras_serializable(package='tf_slwta')
class ActivationNoise(_AlphaMixin, keras.layers.Layer):
  """PNI on activations: `[..., C]` -> `[..., C]`, x + alpha * N(0, std(x)^2).

  Args:
    alpha_init: initial noise scale >= 0 (0.25 as in the paper).
    channelwise: one alpha per channel (last axis) instead of one per layer.
    noise_at_test: keep the noise on when training=False (the default).
    seed: seed of the layer's noise stream, or None.
  """

  def __init__(self, alpha_init: float = 0.25, channelwise: bool = False,
               noise_at_test: bool = True, seed=None, **kwargs):
    super().__init__(**kwargs)
    self._init_pni(alpha_init, channelwise, noise_at_test, seed)

  def build(self, input_shape):
    self._add_alpha(input_shape[-1])

  def call(self, inputs, training=None):
    return self._noisy(inputs, training)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    return {**super().get_config(), **self._pni_config()}


class _NoisyKernelMixin(_AlphaMixin):
  """Constructor and config shared by the noisy Conv2D and Dense layers."""

  def __init__(self, *args, alpha_init: float = 0.25, channelwise: bool = False,
               noise_at_test: bool = True, seed=None, **kwargs):
    super().__init__(*args, **kwargs)
    self._init_pni(alpha_init, channelwise, noise_at_test, seed)

  def get_config(self):
    return {**super().get_config(), **self._pni_config()}


@keras.saving.register_keras_serializable(package='tf_slwta')
class NoisyConv2D(_NoisyKernelMixin, keras.layers.Conv2D):
  """`keras.layers.Conv2D` whose kernel gets PNI noise on every call.

  Takes every Conv2D argument plus alpha_init, channelwise (one alpha per
  output filter), noise_at_test and seed. Input `[B, H, W, C]`, output as
  Conv2D's.
  """

  def build(self, input_shape):
    super().build(input_shape)
    self._add_alpha(self.filters)

  def call(self, inputs, training=None):
    return finish_linear(
        self, self.convolution_op(inputs, self._noisy(self.kernel, training)))


@keras.saving.register_keras_serializable(package='tf_slwta')
class NoisyDense(_NoisyKernelMixin, keras.layers.Dense):
  """`keras.layers.Dense` whose kernel gets PNI noise on every call.

  Takes every Dense argument plus alpha_init, channelwise (one alpha per
  unit), noise_at_test and seed. Input `[B, D]`, output `[B, units]`.
  """

  def build(self, input_shape):
    super().build(input_shape)
    self._add_alpha(self.units)

  def call(self, inputs, training=None):
    return finish_linear(
        self, ops.matmul(inputs, self._noisy(self.kernel, training)))


def batch_shared_layers(model: keras.Model) -> list:
  """The model's layers whose test-time draw is shared by a whole batch.

  A noisy kernel (`NoisyConv2D`, `NoisyDense`) draws one noise per call for
  every example of the batch, and `ActivationNoise` scales its noise by a
  statistic of the whole batch. Answers of one batch from such a model are
  not independent draws: Monte Carlo votes must then be one example per call.

  Returns:
    [layer, ...] in graph order, only those with noise on at test time.
  """
  shared = (ActivationNoise, NoisyConv2D, NoisyDense)
  return [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
          if isinstance(layer, shared) and layer.noise_at_test]

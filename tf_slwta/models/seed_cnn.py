"""The seed's small CNN: conv-pool, conv-pool, flatten, dense, logits."""

from typing import Callable, Mapping, Optional, Sequence, Tuple

import keras

from tf_slwta.layers import ibp as ibp_lib
from tf_slwta.layers import make_activation
from tf_slwta.layers import noise
from tf_slwta.models.common import normalization

# Where the seed puts its noise layers; `inserts` may place a layer at each.
INSERTION_POINTS = ('after_pool1', 'after_pool2', 'after_flatten')


def seed_cnn(image_shape: Tuple[int, int, int], num_classes: int, *,
             mean: Sequence[float], std: Sequence[float],
             filters: Sequence[int] = (32, 64), units: int = 128,
             activation: str = 'relu',
             inserts: Optional[Mapping[str, Callable[[str], keras.layers.Layer]]] = None,
             pni: str = 'none', pni_alpha_init: float = 0.25,
             pni_channelwise: bool = False, pni_at_test: bool = True,
             activation_options: Optional[Mapping[str, object]] = None,
             ibp: bool = False, ibp_threshold: float = 0.01,
             batch_norm: Optional[bool] = None,
             ) -> keras.Model:
  """Builds the seed CNN.

  Layout: normalize, conv3x3(filters[0]) [+ BN] [+ IBP] + act, maxpool2,
  [after_pool1], conv3x3(filters[1]) [+ BN] [+ IBP] + act, maxpool2,
  [after_pool2], flatten, [after_flatten], dense(units) [+ BN] [+ IBP]
  + act, dense(num_classes).

  Why BatchNorm with LWTA (measured, BENCHMARKS.md "Why LWTA diverged"):
  without normalization the seed CNN at SGD 0.05 overshoots in its first
  steps with either activation (cross-entropy 2.3 -> 27); ReLU recovers
  because units die, but an LWTA block always passes one response, of
  either sign, so the overshoot grows geometrically into NaN (with hard
  winners and without the KL too). With a BatchNorm before each competition
  the same settings train smoothly up to a learning rate of 0.2.

  Args:
    image_shape: (H, W, C) of the float32 input in [0, 1].
    num_classes: number of logits.
    mean, std: per-channel pixel statistics for the normalization layer.
    filters: channels of the two convolutions.
    units: width of the hidden dense layer.
    activation: activation kind (see `tf_slwta.layers.make_activation`).
    inserts: {point: factory}; factory(point) returns the layer to insert
      at that point (e.g. a noise layer). Unknown points are refused.
    pni: Parametric Noise Injection: 'activation' puts
      `noise.ActivationNoise` at the three insertion points, 'weight' makes
      every kernel noisy (`noise.NoisyConv2D`, `noise.NoisyDense`), 'both'
      does both, 'none' neither.
    pni_alpha_init, pni_channelwise, pni_at_test: the PNI layers' settings.
    activation_options: keyword arguments of the activation layers (the
      LWTA settings).
    ibp: an `ibp.IBPMask` (blocks of `activation_options['competitors']`,
      default 2) on the outputs of conv1, conv2 and dense, after their
      BatchNorm or bias: a pruned block outputs exact zeros.
    ibp_threshold: test-time pruning threshold of the IBP utilities.
    batch_norm: BatchNorm (and no bias) after the three hidden linear maps;
      None: on for LWTA, off for ReLU (the seed's network).

  Returns:
    Functional `keras.Model` named 'seed_cnn': `[B, H, W, C]` -> logits
    `[B, num_classes]`.
  """
  inserts = dict(inserts or {})
  if batch_norm is None:
    batch_norm = activation == 'lwta'
  pni_args = dict(alpha_init=pni_alpha_init, channelwise=pni_channelwise,
                  noise_at_test=pni_at_test)
  if pni in ('activation', 'both'):
    for point in INSERTION_POINTS:
      if point in inserts:
        raise ValueError(f'pni={pni} and an insert both claim {point}.')
      inserts[point] = lambda p: noise.ActivationNoise(name=f'pni_{p}',
                                                       **pni_args)
  noisy = pni in ('weight', 'both')
  options = dict(activation_options or {})
  conv = (lambda *a, **k: noise.NoisyConv2D(*a, **k, **pni_args)) if noisy \
      else keras.layers.Conv2D
  dense = (lambda *a, **k: noise.NoisyDense(*a, **k, **pni_args)) if noisy \
      else keras.layers.Dense
  unknown = set(inserts) - set(INSERTION_POINTS)
  if unknown:
    raise ValueError(f'Unknown seed_cnn insertion points {sorted(unknown)}; '
                     f'known: {", ".join(INSERTION_POINTS)}.')

  def insert(x, point):
    return inserts[point](point)(x) if point in inserts else x

  def finish(x, name):
    """[BN] [IBP] activation after the linear map `name`."""
    if batch_norm:
      x = keras.layers.BatchNormalization(name=f'{name}_bn')(x)
    if ibp:
      x = ibp_lib.IBPMask(competitors=options.get('competitors', 2),
                          threshold=ibp_threshold, name=f'{name}_ibp')(x)
    return make_activation(activation, f'{name}_act', **options)(x)

  inputs = keras.Input(image_shape, name='images')
  x = normalization(mean, std)(inputs)
  for i, f in enumerate(filters, start=1):
    x = conv(f, 3, padding='same', kernel_initializer='he_normal',
             use_bias=not batch_norm, name=f'conv{i}')(x)
    x = finish(x, f'conv{i}')
    x = keras.layers.MaxPooling2D(2, name=f'pool{i}')(x)
    x = insert(x, f'after_pool{i}')
  x = keras.layers.Flatten(name='flatten')(x)
  x = insert(x, 'after_flatten')
  x = dense(units, kernel_initializer='he_normal', use_bias=not batch_norm,
            name='dense')(x)
  x = finish(x, 'dense')
  logits = dense(num_classes, name='logits')(x)
  return keras.Model(inputs, logits, name='seed_cnn')

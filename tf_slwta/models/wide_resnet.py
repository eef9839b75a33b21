"""Pre-activation WideResNet (Zagoruyko & Komodakis, 2016).

WRN-d-k has three groups of (d - 4) / 6 basic blocks with 16k, 32k and 64k
channels; each block is BN-act-conv3x3-BN-act-conv3x3 with an identity
shortcut, or a 1x1 convolution of the activated input when the shape changes.
"""

from typing import Sequence, Tuple

import keras

from tf_slwta.layers import ibp as ibp_lib
from tf_slwta.layers import make_activation
from tf_slwta.models.common import normalization

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def _batch_norm(name):
  return keras.layers.BatchNormalization(
      momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv(filters, kernel, strides, name):
  return keras.layers.Conv2D(filters, kernel, strides=strides, padding='same',
                             use_bias=False, kernel_initializer='he_normal',
                             name=name)


def _ibp_conv(filters, kernel, strides, name, competitors, threshold):
  return ibp_lib.IBPConv2D(filters, kernel, strides=strides, padding='same',
                           use_bias=False, kernel_initializer='he_normal',
                           competitors=competitors, threshold=threshold,
                           name=name)


def basic_block(x, filters: int, strides: int, activation: str, name: str,
                activation_options=None, ibp: bool = False,
                ibp_threshold: float = 0.01):
  """One pre-activation residual block; `[B, H, W, C]` -> `[B, H/s, W/s, filters]`.

  With `ibp`, both 3x3 convolutions get IBP priors over blocks of the
  activation's competitors (the 1x1 shortcut stays plain).
  """
  options = dict(activation_options or {})
  if ibp:
    competitors = options.get('competitors', 2)
    conv = lambda f, k, s, n: _ibp_conv(f, k, s, n, competitors, ibp_threshold)
  else:
    conv = _conv
  y = _batch_norm(f'{name}_bn1')(x)
  y = make_activation(activation, f'{name}_act1', **options)(y)
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, strides, f'{name}_shortcut')(y)
  else:
    shortcut = x
  y = conv(filters, 3, strides, f'{name}_conv1')(y)
  y = _batch_norm(f'{name}_bn2')(y)
  y = make_activation(activation, f'{name}_act2', **options)(y)
  y = conv(filters, 3, 1, f'{name}_conv2')(y)
  return keras.layers.Add(name=f'{name}_add')([shortcut, y])


def wide_resnet(image_shape: Tuple[int, int, int], num_classes: int, *,
                mean: Sequence[float], std: Sequence[float], depth: int = 34,
                widen_factor: int = 1, activation: str = 'relu',
                activation_options=None, ibp: bool = False,
                ibp_threshold: float = 0.01) -> keras.Model:
  """Builds WRN-depth-widen_factor.

  Args:
    image_shape: (H, W, C) of the float32 input in [0, 1].
    num_classes: number of logits.
    mean, std: per-channel pixel statistics for the normalization layer.
    depth: 6n + 4 for n >= 1 blocks per group (34 as in the seed).
    widen_factor: channel multiplier k >= 1 (1 as in the seed).
    activation: activation kind (see `tf_slwta.layers.make_activation`);
      every activation of the network is of this kind.
    activation_options: keyword arguments of the activation layers (the
      LWTA settings).
    ibp: IBP priors on every residual 3x3 convolution.
    ibp_threshold: test-time pruning threshold of the IBP utilities.

  Returns:
    Functional `keras.Model` named 'wide_resnet_{depth}_{k}': `[B, H, W, C]`
    -> logits `[B, num_classes]`.
  """
  if depth < 10 or (depth - 4) % 6:
    raise ValueError(f'depth={depth} is not 6n + 4 with n >= 1; use 10, 16, '
                     f'22, 28, 34, 40, ...')
  if widen_factor < 1:
    raise ValueError(f'widen_factor must be >= 1, got {widen_factor}.')
  blocks = (depth - 4) // 6
  inputs = keras.Input(image_shape, name='images')
  x = normalization(mean, std)(inputs)
  x = _conv(16, 3, 1, 'stem_conv')(x)
  for group, (width, strides) in enumerate(
      [(16 * widen_factor, 1), (32 * widen_factor, 2), (64 * widen_factor, 2)],
      start=1):
    for block in range(blocks):
      x = basic_block(x, width, strides if block == 0 else 1, activation,
                      name=f'group{group}_block{block + 1}',
                      activation_options=activation_options, ibp=ibp,
                      ibp_threshold=ibp_threshold)
  x = _batch_norm('final_bn')(x)
  x = make_activation(activation, 'final_act', **dict(activation_options or {}))(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  logits = keras.layers.Dense(num_classes, kernel_initializer='he_normal',
                              name='logits')(x)
  return keras.Model(inputs, logits,
                     name=f'wide_resnet_{depth}_{widen_factor}')

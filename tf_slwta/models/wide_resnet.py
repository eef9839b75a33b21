"""Pre-activation WideResNet (Zagoruyko & Komodakis, 2016).

WRN-d-k has three groups of (d - 4) / 6 basic blocks with 16k, 32k and 64k
channels; each block is BN-act-conv3x3-BN-act-conv3x3 with an identity
shortcut, or a 1x1 convolution of the activated input when the shape changes.
"""

from typing import Optional, Sequence, Tuple

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


def basic_block(x, filters: int, strides: int, activation: str, name: str,
                activation_options=None, ibp: bool = False,
                ibp_threshold: float = 0.01, inner: Optional[int] = None):
  """One pre-activation residual block; `[B, H, W, C]` -> `[B, H/s, W/s, filters]`.

  BN-act-conv1-BN-act-conv2 plus the shortcut. With `ibp`, an
  `ibp.IBPMask` (blocks of the activation's competitors) follows each 3x3
  convolution's final output: after BN2 for conv1 (before its activation;
  before BN2 the normalization would divide the utility's scale out and a
  pruned block would output BN2's shift), and after conv2 (no bias) for
  the residual branch. A pruned block therefore outputs exact zeros: conv1's
  pruned blocks can be dropped from conv1, BN2 and conv2's inputs, which
  `inner` (conv1's output width, default `filters`) does in a pruned copy
  (models/prune.py).
  """
  options = dict(activation_options or {})
  mask = lambda n: (ibp_lib.IBPMask(
      competitors=options.get('competitors', 2), threshold=ibp_threshold,
      name=n) if ibp else (lambda t: t))
  y = _batch_norm(f'{name}_bn1')(x)
  y = make_activation(activation, f'{name}_act1', **options)(y)
  if strides != 1 or x.shape[-1] != filters:
    shortcut = _conv(filters, 1, strides, f'{name}_shortcut')(y)
  else:
    shortcut = x
  y = _conv(inner or filters, 3, strides, f'{name}_conv1')(y)
  y = _batch_norm(f'{name}_bn2')(y)
  y = mask(f'{name}_ibp1')(y)
  y = make_activation(activation, f'{name}_act2', **options)(y)
  y = _conv(filters, 3, 1, f'{name}_conv2')(y)
  y = mask(f'{name}_ibp2')(y)
  return keras.layers.Add(name=f'{name}_add')([shortcut, y])


def wide_resnet(image_shape: Tuple[int, int, int], num_classes: int, *,
                mean: Sequence[float], std: Sequence[float], depth: int = 34,
                widen_factor: int = 1, activation: str = 'relu',
                activation_options=None, ibp: bool = False,
                ibp_threshold: float = 0.01,
                inner_widths: Optional[Sequence[int]] = None) -> keras.Model:
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
    ibp: IBP priors (`ibp.IBPMask`) on every residual 3x3 convolution's
      blocks (see `basic_block` for where).
    ibp_threshold: test-time pruning threshold of the IBP utilities.
    inner_widths: per residual block (in order), the width of its first
      convolution; None keeps the group widths (a pruned copy narrows them).

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
  inner = list(inner_widths or [None] * (3 * blocks))
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
                      ibp_threshold=ibp_threshold,
                      inner=inner[(group - 1) * blocks + block])
  x = _batch_norm('final_bn')(x)
  x = make_activation(activation, 'final_act', **dict(activation_options or {}))(x)
  x = keras.layers.GlobalAveragePooling2D(name='pool')(x)
  logits = keras.layers.Dense(num_classes, kernel_initializer='he_normal',
                              name='logits')(x)
  return keras.Model(inputs, logits,
                     name=f'wide_resnet_{depth}_{widen_factor}')

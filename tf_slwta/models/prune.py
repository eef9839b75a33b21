"""The smaller network an IBP model's pruning leaves, for test time.

A pruned IBP block outputs exact zeros (`ibp.IBPMask`), so it can be taken
out: its channels leave the linear map that makes them, its normalization,
and the input of the next linear map. The kept utilities sigmoid(t) are
folded into the BatchNorm (z * BN(h) is a BatchNorm with gamma and beta
scaled by z) or, without one, into the kernel and bias. The result has no
IBP layers and computes the same function (tests/test_prune.py).

Where the pruned model can shrink:
  * seed_cnn: conv1, conv2 and dense lose their pruned blocks' channels;
  * wide_resnet: each residual block's first convolution (its IBP after
    BN2) loses them; the second one's utilities (on the residual stream,
    which keeps its width) are folded into its kernel.
Kept channels stay in the LWTA layout: the kept blocks' first competitors,
then their second ones, and so on.
"""

from typing import List, Tuple

import keras
import numpy as np

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta.layers import ibp


def _kept(mask: ibp.IBPMask) -> Tuple[np.ndarray, np.ndarray]:
  """(kept channel indices in layout order, their utilities z).

  A mask with every block pruned keeps block 0 with z = 0, so the layer
  keeps a width and still outputs zeros.
  """
  kept = np.flatnonzero(mask.kept())
  z = mask.utilities().numpy()
  if not len(kept):
    kept = np.array([0])
  channels = np.concatenate([u * mask.blocks + kept
                             for u in range(mask.competitors)])
  return channels, np.tile(z[kept], mask.competitors)


def _set(layer: keras.layers.Layer, values: List[np.ndarray]) -> None:
  layer.set_weights([np.asarray(v, np.float32) for v in values])


def _fold_into_batch_norm(bn_old, bn_new, channels, z):
  gamma, beta, mean, var = bn_old.get_weights()
  _set(bn_new, [gamma[channels] * z, beta[channels] * z, mean[channels],
                var[channels]])


def compact(model: keras.Model, model_config: config_lib.ModelConfig,
            info: data_lib.DatasetInfo) -> keras.Model:
  """A copy of an IBP model without its pruned blocks (and IBP layers).

  Args:
    model: a seed_cnn or wide_resnet built with `ibp=True` (no PNI).
    model_config: the settings it was built with.
    info: its data set's facts.

  Returns:
    A functional model of the same architecture with narrower layers,
    `[B, H, W, C]` -> logits; deterministic where `model` is (the LWTA
    layers keep their sampling).

  Raises:
    ValueError: the model has no IBP layers, or has noise injection (whose
      scale depends on the whole tensor, so pruning would change it).
  """
  # Imported here: models/__init__.py imports this module's neighbours.
  from tf_slwta import models  # pylint: disable=g-import-not-at-top
  if not model_config.ibp:
    raise ValueError('compact needs a model built with ibp=True.')
  if model_config.pni != 'none':
    raise ValueError('compact does not support noise injection (pni).')
  layer = model.get_layer
  if model_config.name == 'seed_cnn':
    kept = [_kept(layer(f'{n}_ibp')) for n in ('conv1', 'conv2', 'dense')]
    small_config = config_lib.ModelConfig(**{
        **model_config.__dict__, 'ibp': False,
        'seed_cnn_filters': (len(kept[0][0]), len(kept[1][0])),
        'seed_cnn_units': len(kept[2][0])})
    small = models.build_model(small_config, info)
    _copy_seed_cnn(model, small, kept)
    return small
  names = [l.name[:-len('_conv1')] for l in model.layers
           if l.name.endswith('_conv1')]
  kept = [_kept(layer(f'{n}_ibp1')) for n in names]
  small = models.wide_resnet.wide_resnet(
      info.image_shape, info.num_classes, mean=info.mean, std=info.std,
      depth=model_config.depth, widen_factor=model_config.widen_factor,
      activation=model_config.activation,
      activation_options=models.activation_options(model_config),
      inner_widths=[len(c) for c, _ in kept])
  _copy_wide_resnet(model, small, names, kept)
  return small


def _copy_seed_cnn(model, small, kept) -> None:
  """Weights of `model` into the narrower `small` (see `compact`)."""
  old, new = model.get_layer, small.get_layer
  batch_norm = any(l.name == 'conv1_bn' for l in model.layers)
  previous = None  # Kept input channels of the next linear map.
  for name, (channels, z) in zip(('conv1', 'conv2'), kept[:2]):
    weights = old(name).get_weights()
    kernel = weights[0] if previous is None else weights[0][:, :, previous]
    kernel = kernel[..., channels]
    if batch_norm:
      _set(new(name), [kernel])
      _fold_into_batch_norm(old(f'{name}_bn'), new(f'{name}_bn'), channels, z)
    else:
      _set(new(name), [kernel * z, weights[1][channels] * z])
    previous = channels
  # dense reads the flattened [h, w, conv2 channels].
  weights = old('dense').get_weights()
  spatial = weights[0].shape[0] // old('conv2').filters
  kernel = weights[0].reshape(spatial, -1, weights[0].shape[1])
  kernel = kernel[:, previous].reshape(-1, weights[0].shape[1])
  channels, z = kept[2]
  if batch_norm:
    _set(new('dense'), [kernel[:, channels]])
    _fold_into_batch_norm(old('dense_bn'), new('dense_bn'), channels, z)
  else:
    _set(new('dense'), [kernel[:, channels] * z, weights[1][channels] * z])
  logits_kernel, logits_bias = old('logits').get_weights()
  _set(new('logits'), [logits_kernel[channels], logits_bias])
  for name in ('normalize',):
    new(name).set_weights(old(name).get_weights())


def _copy_wide_resnet(model, small, names, kept) -> None:
  """Weights of `model` into the narrower `small` (see `compact`)."""
  old, new = model.get_layer, small.get_layer
  done = set()
  for name, (channels, z) in zip(names, kept):
    _set(new(f'{name}_conv1'),
         [old(f'{name}_conv1').get_weights()[0][..., channels]])
    _fold_into_batch_norm(old(f'{name}_bn2'), new(f'{name}_bn2'), channels, z)
    mask2 = old(f'{name}_ibp2')
    z2 = np.tile(mask2.utilities().numpy(), mask2.competitors)
    _set(new(f'{name}_conv2'),
         [old(f'{name}_conv2').get_weights()[0][:, :, channels] * z2])
    done.update({f'{name}_conv1', f'{name}_bn2', f'{name}_conv2'})
  for layer in small.layers:
    if layer.weights and layer.name not in done:
      layer.set_weights(old(layer.name).get_weights())

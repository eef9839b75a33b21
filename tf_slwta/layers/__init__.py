"""Keras 3 layers of tf_slwta and the activation factory the models use."""

import keras

ACTIVATION_LAYERS = ('relu',)


def make_activation(kind: str, name: str) -> keras.layers.Layer:
  """Builds the activation layer a model puts after each linear map.

  Args:
    kind: activation name, one of `ACTIVATION_LAYERS`.
    name: unique layer name inside the model.

  Returns:
    A Keras layer mapping `[..., C]` to `[..., C]` (same shape and dtype).
  """
  if kind == 'relu':
    return keras.layers.ReLU(name=name)
  raise ValueError(f'activation={kind!r} is not supported; choose one of '
                   f'{", ".join(ACTIVATION_LAYERS)}.')

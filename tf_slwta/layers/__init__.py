"""Keras 3 layers of tf_slwta and the activation factory the models use."""

import keras

from tf_slwta.layers.lwta import LWTA

ACTIVATION_LAYERS = ('relu', 'lwta')


def make_activation(kind: str, name: str, **lwta_options) -> keras.layers.Layer:
  """Builds the activation layer a model puts after each linear map.

  Args:
    kind: activation name, one of `ACTIVATION_LAYERS`.
    name: unique layer name inside the model.
    **lwta_options: for 'lwta', the `LWTA` arguments (competitors,
      temperature, test_temperature, deterministic).

  Returns:
    A Keras layer mapping `[..., C]` to `[..., C]` (same shape and dtype).
  """
  if kind == 'relu':
    return keras.layers.ReLU(name=name)
  if kind == 'lwta':
    return LWTA(name=name, **lwta_options)
  raise ValueError(f'activation={kind!r} is not supported; choose one of '
                   f'{", ".join(ACTIVATION_LAYERS)}.')

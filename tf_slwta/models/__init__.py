"""Model registry: `build_model(model_config, dataset_info)` -> Keras model.

Every model takes float32 images `[batch, H, W, C]` in [0, 1], normalizes
them inside the graph, and returns logits `[batch, num_classes]`.
"""

from typing import Callable, Mapping, Optional

import keras

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta.models import seed_cnn
from tf_slwta.models import wide_resnet

InsertFactory = Callable[[str], keras.layers.Layer]


def build_model(model: config_lib.ModelConfig, info: data_lib.DatasetInfo,
                inserts: Optional[Mapping[str, InsertFactory]] = None,
                ) -> keras.Model:
  """Builds the configured model for a data set.

  Args:
    model: which network and its sizes.
    info: the data set's image shape, class count and pixel statistics.
    inserts: for `seed_cnn`, layers to put at its named insertion points
      (`seed_cnn.INSERTION_POINTS`); factory(point_name) -> layer.

  Returns:
    A functional `keras.Model` returning logits `[batch, num_classes]`.
  """
  options = activation_options(model)
  if model.name == 'seed_cnn':
    return seed_cnn.seed_cnn(
        info.image_shape, info.num_classes, mean=info.mean, std=info.std,
        filters=model.seed_cnn_filters, units=model.seed_cnn_units,
        activation=model.activation, inserts=inserts, pni=model.pni,
        pni_alpha_init=model.pni_alpha_init,
        pni_channelwise=model.pni_channelwise, pni_at_test=model.pni_at_test,
        activation_options=options, ibp=model.ibp,
        ibp_threshold=model.ibp_threshold,
        batch_norm=model.seed_cnn_batch_norm)
  if inserts:
    raise ValueError(f'Model {model.name} has no insertion points; only '
                     f'seed_cnn takes inserts.')
  if model.name == 'wide_resnet':
    return wide_resnet.wide_resnet(
        info.image_shape, info.num_classes, mean=info.mean, std=info.std,
        depth=model.depth, widen_factor=model.widen_factor,
        activation=model.activation, activation_options=options,
        ibp=model.ibp, ibp_threshold=model.ibp_threshold)
  raise ValueError(f'Unknown model {model.name!r}; choose one of '
                   f'{", ".join(config_lib.MODELS)}.')



def activation_options(model: config_lib.ModelConfig) -> dict:
  """Keyword arguments of the model's activation layers (empty for relu)."""
  if model.activation != 'lwta':
    return {}
  return {'competitors': model.lwta_competitors,
          'temperature': model.lwta_temperature,
          'test_temperature': model.lwta_test_temperature,
          'deterministic': model.lwta_deterministic}

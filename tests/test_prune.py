"""The pruned copy of an IBP model computes what the masked model computes."""

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.layers import ibp
from tf_slwta.layers import surrogate
from tf_slwta.models import prune

INFO = data_lib.dataset_info('synthetic')


@pytest.mark.parametrize('settings', [
    dict(activation='lwta', seed_cnn_filters=(8, 16), seed_cnn_units=32),
    dict(activation='relu', seed_cnn_filters=(8, 16), seed_cnn_units=32),
    dict(name='wide_resnet', depth=10, activation='lwta'),
    dict(name='wide_resnet', depth=10, activation='lwta', lwta_competitors=4),
])
def test_compact_drops_pruned_blocks_and_keeps_the_function(settings):
  config = config_lib.ModelConfig(ibp=True, **settings)
  model = models.build_model(config, INFO)
  x = tf.random.stateless_uniform([6, 28, 28, 1], seed=[1, 2])
  model(x, training=True)  # BatchNorm statistics away from their start.
  for index, mask in enumerate(ibp.ibp_layers(model)):
    rng = np.random.default_rng(index)
    logits = rng.uniform(1.0, 5.0, mask.blocks)
    logits[rng.random(mask.blocks) < 0.5] = -8.0  # About half pruned.
    if index == 1:
      logits[:] = -8.0  # One mask with every block pruned.
    mask.utility_logits.assign(logits)
  small = prune.compact(model, config, INFO)
  assert not ibp.ibp_layers(small)
  assert small.count_params() < model.count_params()
  with surrogate.gradient_surrogate('expected'):  # Deterministic LWTA.
    np.testing.assert_allclose(small(x, training=False),
                               model(x, training=False), atol=1e-4)


def test_compact_refuses_models_without_ibp():
  config = config_lib.ModelConfig(activation='lwta')
  with pytest.raises(ValueError, match='ibp=True'):
    prune.compact(models.build_model(config, INFO), config, INFO)

"""Model builders: shapes, logits, insertion points, save and load."""

import json

import keras
import numpy as np
import pytest

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.models import seed_cnn

FASHION = data_lib.dataset_info('fashion_mnist')
CIFAR = data_lib.dataset_info('cifar10')


def _images(info, n=3, seed=0):
  return np.random.default_rng(seed).random((n,) + info.image_shape).astype(np.float32)


def test_seed_cnn_returns_logits():
  model = models.build_model(config_lib.ModelConfig(), FASHION)
  logits = model(_images(FASHION, 4)).numpy()
  assert logits.shape == (4, 10)
  assert not np.allclose(logits.sum(-1), 1.0)  # Logits, not probabilities.
  assert model.get_layer('normalize') is not None


def test_seed_cnn_layout():
  model = models.build_model(config_lib.ModelConfig(seed_cnn_filters=(8, 16),
                                                    seed_cnn_units=20), FASHION)
  shapes = {l.name: tuple(l.output.shape[1:]) for l in model.layers}
  assert shapes['pool1'] == (14, 14, 8)
  assert shapes['pool2'] == (7, 7, 16)
  assert shapes['flatten'] == (7 * 7 * 16,)
  assert shapes['dense'] == (20,)
  assert shapes['logits'] == (10,)


def test_normalization_uses_dataset_statistics():
  model = models.build_model(config_lib.ModelConfig(), CIFAR)
  normalize = model.get_layer('normalize')
  x = np.ones((1, 32, 32, 3), np.float32) * np.array(CIFAR.mean, np.float32)
  np.testing.assert_allclose(normalize(x).numpy(), 0.0, atol=1e-5)


def test_seed_cnn_insertion_points():
  made = []

  def factory(point):
    made.append(point)
    return keras.layers.GaussianNoise(0.1, name=f'noise_{point}')

  model = models.build_model(
      config_lib.ModelConfig(), FASHION,
      inserts={p: factory for p in seed_cnn.INSERTION_POINTS})
  assert made == list(seed_cnn.INSERTION_POINTS)
  names = [l.name for l in model.layers]
  assert names.index('noise_after_pool1') == names.index('pool1') + 1
  assert names.index('noise_after_pool2') == names.index('pool2') + 1
  assert names.index('noise_after_flatten') == names.index('flatten') + 1


def test_unknown_insertion_point_is_refused():
  with pytest.raises(ValueError, match='after_pool3'):
    models.build_model(config_lib.ModelConfig(), FASHION,
                       inserts={'after_pool3': keras.layers.Identity})


@pytest.mark.parametrize('depth,widen,params', [
    # Parameter counts of the reference WideResNets (Zagoruyko & Komodakis,
    # Table 1: WRN-28-10 has 36.5M parameters; WRN-16-8, 11.0M).
    (28, 10, 36.5e6), (16, 8, 11.0e6)])
def test_wide_resnet_matches_reference_size(depth, widen, params):
  model = models.build_model(
      config_lib.ModelConfig(name='wide_resnet', depth=depth,
                             widen_factor=widen), CIFAR)
  assert abs(model.count_params() - params) / params < 0.01


def test_wide_resnet_34_1_shapes():
  model = models.build_model(config_lib.ModelConfig(name='wide_resnet'), FASHION)
  assert model.name == 'wide_resnet_34_1'
  adds = [l for l in model.layers if l.name.endswith('_add')]
  assert len(adds) == 3 * 5  # (34 - 4) / 6 = 5 blocks per group.
  assert tuple(model.get_layer('group3_block5_add').output.shape[1:]) == (7, 7, 64)
  assert model(_images(FASHION, 2)).shape == (2, 10)


@pytest.mark.parametrize('depth', [33, 8, 0])
def test_wide_resnet_refuses_bad_depth(depth):
  with pytest.raises(ValueError, match='6n \\+ 4'):
    config_lib.ModelConfig(name='wide_resnet', depth=depth)


@pytest.mark.parametrize('cfg', [
    config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16),
    config_lib.ModelConfig(name='wide_resnet', depth=10)])
def test_save_and_load_round_trip(cfg, tmp_path):
  model = models.build_model(cfg, CIFAR)
  x = _images(CIFAR, 2)
  path = str(tmp_path / 'model.keras')
  model.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(loaded(x, training=False).numpy(),
                             model(x, training=False).numpy(), rtol=1e-5,
                             atol=1e-5)
  # Equal up to JSON's tuple -> list, which the .keras format goes through.
  assert (json.loads(json.dumps(loaded.get_config())) ==
          json.loads(json.dumps(model.get_config())))
  clone = keras.Model.from_config(model.get_config())
  assert clone.count_params() == model.count_params()

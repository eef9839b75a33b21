"""A small trained model shared by the attack tests (trained once per process)."""

import functools

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models


@functools.lru_cache(maxsize=None)
def trained_model(seed: int = 0) -> keras.Model:
  """The tiny seed CNN trained to ~100% on synthetic data (a few seconds)."""
  keras.utils.set_random_seed(seed)
  images, labels = data_lib.make_synthetic('train', 2048)
  model = models.build_model(
      config_lib.ModelConfig(seed_cnn_filters=(8, 16), seed_cnn_units=32),
      data_lib.dataset_info('synthetic'))
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(images.astype(np.float32) / 255.0, labels, epochs=3, batch_size=64,
            verbose=0)
  return model


@functools.lru_cache(maxsize=None)
def sample_batch(n: int = 128):
  """(float32 images `[n, 28, 28, 1]` in [0, 1], int64 labels `[n]`) as numpy."""
  images, labels = data_lib.make_synthetic('test', n)
  return images.astype(np.float32) / 255.0, labels


@functools.lru_cache(maxsize=None)
def logits_fn(seed: int = 0):
  """One callable per model, so compiled attacks are reused across tests."""
  model = trained_model(seed)
  return lambda x: model(x, training=False)


def accuracy(fn, x, y, mc_samples: int = 1) -> float:
  from tf_slwta import attacks  # pylint: disable=g-import-not-at-top
  return float(np.mean(attacks.predict(fn, tf.convert_to_tensor(x),
                                       mc_samples).numpy() == y))

"""A small network distilled from a model's answers: a transfer source.

When a model's gradients are masked (a quantized input, a purifier behind
`stop_gradient`, shattered or saturated gradients), the white-box attacks
see nothing. A smooth network trained to give the model's own answers
around the audited images has gradients that point where the model's
decisions change; attacks on it transfer (the "substitute model" of
Papernot et al., 2017, and the smooth approximation of BPDA, Athalye et
al., 2018, without knowing what the model hides). The audit builds one
when a check finds masking (`audit.run_audit`'s escalation).

The training set: every image, the attacker's best image for it so far,
and `copies` random points of its eps ball, each labelled with the model's
decision probabilities (the mean softmax over `mc_samples` passes: soft
labels). Plain Keras (`Sequential`, `fit`), seeded, a few seconds on a CPU
for a few hundred images.
"""

from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tf_slwta.attacks import common
from tf_slwta.attacks import eot

LogitsFn = Callable[[tf.Tensor], tf.Tensor]


def training_set(logits_fn: LogitsFn, images: np.ndarray, eps: float,
                 norm: str = 'inf', copies: int = 8, mc_samples: int = 1,
                 extra: Optional[np.ndarray] = None, seed: int = 0,
                 batch_size: int = 500):
  """Inputs around `images` and the model's decision probabilities there.

  Args:
    logits_fn: the model, images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    images: float32 `[N, H, W, C]` in [0, 1].
    eps: radius of the points drawn around each image, >= 0.
    norm: 'inf' or '2'.
    copies: random points of the eps ball per image, >= 0.
    mc_samples: passes per decision of a stochastic model, >= 1.
    extra: more float32 images `[M, H, W, C]` to label (e.g. the
      attacker's best images so far), or None.
    seed: seed of the random points.
    batch_size: images per call of the model.

  Returns:
    (float32 inputs `[N (1 + copies) + M, H, W, C]`, float32 soft labels
    `[same, K]`, rows summing to 1).
  """
  norm = common.normalize_norm(norm)
  parts = [images] + ([extra] if extra is not None else [])
  for copy in range(copies):
    noise = common.random_in_ball(tf.shape(images), float(eps), norm,
                                  tf.constant([seed, copy], tf.int64))
    parts.append(np.clip(images + noise.numpy(), 0.0, 1.0))
  inputs = np.concatenate(parts).astype(np.float32)
  labels = np.concatenate([
      eot.compiled_mean_probabilities(
          logits_fn, tf.constant(inputs[i:i + batch_size]),
          mc_samples).numpy()
      for i in range(0, len(inputs), batch_size)])
  return inputs, labels.astype(np.float32)


def distilled_network(inputs: np.ndarray, soft_labels: np.ndarray,
                      epochs: int = 40, seed: int = 0,
                      verbose: int = 0) -> keras.Model:
  """A small CNN trained on (inputs, soft labels); returns logits.

  Two 3x3 convolutions (32, 64 channels) with max pooling, a 128-unit
  hidden layer; Adam at 1e-3 on the cross-entropy with the soft labels.

  Args:
    inputs: float32 `[N, H, W, C]` in [0, 1].
    soft_labels: float32 `[N, K]`, rows summing to 1.
    epochs: passes over the data, >= 1.
    seed: seeds the initial weights and the shuffling.
    verbose: Keras' fit verbosity.

  Returns:
    A Keras model, images `[B, H, W, C]` -> logits `[B, K]`.
  """
  init = lambda k: keras.initializers.GlorotUniform(seed=seed * 10 + k)
  model = keras.Sequential([
      keras.layers.Input(inputs.shape[1:]),
      keras.layers.Conv2D(32, 3, padding='same', activation='relu',
                          kernel_initializer=init(1)),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(64, 3, padding='same', activation='relu',
                          kernel_initializer=init(2)),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(128, activation='relu', kernel_initializer=init(3)),
      keras.layers.Dense(soft_labels.shape[-1], kernel_initializer=init(4)),
  ], name='distilled')
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True))
  order = np.random.default_rng(seed).permutation(len(inputs))
  model.fit(inputs[order], soft_labels[order], batch_size=64, epochs=epochs,
            shuffle=True, verbose=verbose)
  return model


def distill(logits_fn: LogitsFn, images: np.ndarray, eps: float,
            norm: str = 'inf', mc_samples: int = 1,
            extra: Optional[np.ndarray] = None, seed: int = 0,
            copies: int = 8, epochs: int = 40) -> LogitsFn:
  """A transfer source for `logits_fn` around `images` (see the module).

  Returns:
    The distilled network's logits function, images `[B, H, W, C]` in
    [0, 1] -> logits `[B, K]`.
  """
  inputs, labels = training_set(logits_fn, images, eps, norm, copies,
                                mc_samples, extra, seed)
  network = distilled_network(inputs, labels, epochs, seed)
  return lambda x: network(x, training=False)

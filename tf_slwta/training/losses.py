"""Training losses computed per replica, scaled for a global batch."""

import keras
import tensorflow as tf


def per_example_cross_entropy(labels: tf.Tensor, logits: tf.Tensor,
                              label_smoothing: float = 0.0) -> tf.Tensor:
  """Softmax cross-entropy per example.

  Args:
    labels: int `[B]` in [0, num_classes).
    logits: float `[B, num_classes]`.
    label_smoothing: in [0, 1); the target becomes
      (1 - s) * one_hot + s / num_classes.

  Returns:
    float32 `[B]`, >= 0.
  """
  num_classes = tf.shape(logits)[-1]
  targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=logits.dtype)
  return keras.losses.categorical_crossentropy(
      targets, logits, from_logits=True, label_smoothing=label_smoothing)


def replica_loss(model: keras.Model, labels: tf.Tensor, logits: tf.Tensor, *,
                 global_batch_size: int, label_smoothing: float = 0.0,
                 kl_scale=1.0) -> tf.Tensor:
  """The loss one replica differentiates; replica losses sum to the objective.

  objective = mean cross-entropy over the global batch
              + kl_scale * sum(model.losses).
  `model.losses` are the KL terms the stochastic layers add (LWTA winners,
  IBP sticks and utilities); with kl_scale = 1 / (number of training
  examples) the objective is the negative ELBO per example, as in the
  reference. Each replica divides its cross-entropy sum by the global batch
  (`tf.nn.compute_average_loss`) and its KL by the number of replicas
  (`tf.nn.scale_regularization_loss`), so the replicas' gradients sum to the
  gradient of the objective, whatever the number of replicas.

  Args:
    model: the model just called on this replica's batch (its `losses`).
    labels: int `[b]` of this replica.
    logits: float `[b, num_classes]` of this replica.
    global_batch_size: examples in the step over all replicas.
    label_smoothing: in [0, 1).
    kl_scale: float or scalar tensor >= 0 multiplying the KL terms.

  Returns:
    float32 scalar.
  """
  ce = per_example_cross_entropy(labels, logits, label_smoothing)
  loss = tf.nn.compute_average_loss(ce, global_batch_size=global_batch_size)
  if model.losses:
    loss += kl_scale * tf.nn.scale_regularization_loss(tf.add_n(model.losses))
  return loss


def kl_scale(step: tf.Tensor, num_train_examples: int,
             anneal_steps: int = 0) -> tf.Tensor:
  """1 / N, ramped linearly from 0 over `anneal_steps` steps (KL annealing).

  Args:
    step: the global step (int scalar tensor).
    num_train_examples: N >= 1.
    anneal_steps: >= 0; 0 applies the full weight from the first step.

  Returns:
    float32 scalar in [0, 1 / N].
  """
  weight = 1.0
  if anneal_steps:
    weight = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / anneal_steps)
  return weight / float(num_train_examples)

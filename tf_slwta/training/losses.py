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
                 ) -> tf.Tensor:
  """The loss one replica differentiates; replica losses sum to the objective.

  objective = mean cross-entropy over the global batch + sum(model.losses).
  Each replica divides its cross-entropy sum by the global batch
  (`tf.nn.compute_average_loss`) and its share of the model losses by the
  number of replicas (`tf.nn.scale_regularization_loss`), so summing the
  gradients over replicas, as the optimizer does, gives the right gradient.
  Layers that add KL terms with `add_loss` must already scale them by the
  training-set size.

  Args:
    model: the model just called on this replica's batch (its `losses`).
    labels: int `[b]` of this replica.
    logits: float `[b, num_classes]` of this replica.
    global_batch_size: examples in the step over all replicas.
    label_smoothing: in [0, 1).

  Returns:
    float32 scalar.
  """
  ce = per_example_cross_entropy(labels, logits, label_smoothing)
  loss = tf.nn.compute_average_loss(ce, global_batch_size=global_batch_size)
  if model.losses:
    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
  return loss

"""Training losses computed per replica, scaled for a global batch.

The objective of a model with stochastic LWTA and IBP layers, per example
and averaged over the global batch B of a step (N training examples):

  objective = 1/B sum_b CE(y_b, f(x_b; xi_b, z))            (one draw each)
              + lwta_kl_weight * 1/B sum_b KL(q(xi | x_b) || uniform)
              + ibp_kl_weight / N * [KL(q(v) || Beta(alpha, 1))
                                     + KL(q(z) || Bernoulli(pi(v)))]

xi are the LWTA winners: local latent variables, one set per example, so
their KL is a per-example term; the ELBO divided by N gives it weight 1.
v and z (IBP sticks and utilities) are global, shared by all N examples;
the ELBO divided by N gives their KL weight 1 / N. With both weights 1
the objective is the negative ELBO per example, the cross-entropy estimated
with one relaxed (Gumbel-softmax, binary-concrete) draw of xi and z, the
stick KL in closed form and the utility KL with one draw of the sticks.

The references do not use those weights: their winner KL is divided by the
training-set size (and, in the TF reference, by it twice), i.e. weighted
~1e-5 instead of 1. At weight 1 the winner KL (thousands of nats per
example, against a cross-entropy of ~2) drives every block towards equal
responses and the network does not learn. The default weights are the ones
chosen by measurement in BENCHMARKS.md ("The ELBO's KL weights");
`TrainConfig` documents them, `kl_weights` applies them.
"""

from typing import Tuple

import keras
import tensorflow as tf

from tf_slwta.layers import ibp
from tf_slwta.layers import lwta


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


def kl_terms(model: keras.Model) -> Tuple[tf.Tensor, tf.Tensor]:
  """The KL terms of the model's last call, unweighted.

  Args:
    model: a model just called with training=True.

  Returns:
    (winner KL: the LWTA layers' per-example KL, averaged over the call's
    batch, float32 scalar >= 0; global KL: the IBP layers' KL, >= 0). Both
    0 for a model without such layers.
  """
  def total(layers):
    terms = [t for l in layers for t in l.losses]
    return tf.add_n(terms) if terms else tf.constant(0.0)

  return total(lwta.lwta_layers(model)), total(ibp.ibp_layers(model))


def replica_loss(model: keras.Model, labels: tf.Tensor, logits: tf.Tensor, *,
                 global_batch_size: int, label_smoothing: float = 0.0,
                 winner_kl_weight=0.0, global_kl_weight=0.0) -> tf.Tensor:
  """The loss one replica differentiates; replica losses sum to the objective.

  objective = mean cross-entropy over the global batch
              + winner_kl_weight * winner KL + global_kl_weight * global KL
  (`kl_terms`; `kl_weights` gives the weights of the module docstring's
  objective). Each replica divides its cross-entropy sum by the global batch
  (`tf.nn.compute_average_loss`) and its KL terms by the number of replicas
  (`tf.nn.scale_regularization_loss`; the winner KL is a mean over the
  replica's share of the batch, the global KL the same on every replica), so
  the replicas' gradients sum to the gradient of the objective, whatever the
  number of replicas.

  Args:
    model: the model just called on this replica's batch.
    labels: int `[b]` of this replica.
    logits: float `[b, num_classes]` of this replica.
    global_batch_size: examples in the step over all replicas.
    label_smoothing: in [0, 1).
    winner_kl_weight, global_kl_weight: floats or scalar tensors >= 0.

  Returns:
    float32 scalar.
  """
  ce = per_example_cross_entropy(labels, logits, label_smoothing)
  loss = tf.nn.compute_average_loss(ce, global_batch_size=global_batch_size)
  winner, global_ = kl_terms(model)
  return loss + tf.nn.scale_regularization_loss(
      winner_kl_weight * winner + global_kl_weight * global_)


def kl_weights(step: tf.Tensor, num_train_examples: int, *,
               lwta_kl_weight: float = 1.0, ibp_kl_weight: float = 1.0,
               anneal_steps: int = 0) -> Tuple[tf.Tensor, tf.Tensor]:
  """The weights of the winner and global KL terms at a step.

  Args:
    step: the global step (int scalar tensor).
    num_train_examples: N >= 1.
    lwta_kl_weight: weight of the per-example winner KL, >= 0.
    ibp_kl_weight: weight of the global KL / N, >= 0.
    anneal_steps: >= 0; both weights ramp linearly from 0 over this many
      steps (KL annealing); 0 applies them from the first step.

  Returns:
    (winner weight in [0, lwta_kl_weight], global weight in
    [0, ibp_kl_weight / N]), float32 scalars.
  """
  ramp = 1.0
  if anneal_steps:
    ramp = tf.minimum(1.0, tf.cast(step + 1, tf.float32) / anneal_steps)
  ramp = tf.convert_to_tensor(ramp, tf.float32)
  return (ramp * lwta_kl_weight,
          ramp * (ibp_kl_weight / float(num_train_examples)))

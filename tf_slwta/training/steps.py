"""The compiled training and evaluation steps, run on every replica.

After google/uncertainty-baselines: `train_step` is a `tf.function` that
takes a distributed iterator, runs one step on every replica with
`strategy.run`, and returns sums reduced over replicas; the per-replica loss
is divided by the global batch.

The seam for defenses is `perturb(model, images, labels) -> images`: it is
called on every replica's training batch inside the compiled step, before
the forward pass, and its output is treated as a constant (no gradient flows
through it). The default leaves the batch unchanged.
"""

from typing import Callable, Dict

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import data as data_lib
from tf_slwta.training import losses
from tf_slwta.training import state as state_lib
from tf_slwta.training import variational

PerturbFn = Callable[[keras.Model, tf.Tensor, tf.Tensor], tf.Tensor]


def identity_perturbation(model: keras.Model, images: tf.Tensor,
                          labels: tf.Tensor) -> tf.Tensor:
  """The default perturbation seam: train on the clean batch.

  Args:
    model: the model being trained (unused here; attacks need it).
    images: float32 `[b, H, W, C]` in [0, 1], one replica's batch.
    labels: int64 `[b]`.

  Returns:
    `images`, unchanged.
  """
  del model, labels
  return images


def make_train_step(state: state_lib.TrainingState,
                    strategy: tf.distribute.Strategy, *,
                    global_batch_size: int, label_smoothing: float,
                    perturb: PerturbFn, clean_loss_weight: float = 0.0,
                    num_train_examples: int = 1, kl_anneal_steps: int = 0,
                    lwta_kl_weight: float = 1.0, ibp_kl_weight: float = 1.0):
  """Builds the compiled training step.

  With `clean_loss_weight` w > 0 the objective is
  w * loss(clean batch) + (1 - w) * loss(perturbed batch). KL terms of
  stochastic layers are weighted as `losses.kl_weights` says (winner KL by
  `lwta_kl_weight`, global KL by `ibp_kl_weight / num_train_examples`) and
  annealed over `kl_anneal_steps`.

  Returns:
    `train_step(iterator) -> (objective, stats)`: runs one optimizer step
    on the next distributed batch; `objective` is the float32 scalar loss
    summed over replicas, `stats` float32 `[4]` = (correct, examples) summed
    over replicas, then (KL, KL term) averaged over replicas: KL is the
    unscaled sum of `model.losses` (0 without stochastic layers), the KL
    term is KL as weighted in the objective.
  """
  model, optimizer = state.model, state.optimizer

  def objective(images, labels):
    """(logits, replica loss, `[2]` unscaled KL and KL term)."""
    logits = model(images, training=True)
    winner_weight, global_weight = losses.kl_weights(
        optimizer.iterations, num_train_examples,
        lwta_kl_weight=lwta_kl_weight, ibp_kl_weight=ibp_kl_weight,
        anneal_steps=kl_anneal_steps)
    loss = losses.replica_loss(
        model, labels, logits, global_batch_size=global_batch_size,
        label_smoothing=label_smoothing, winner_kl_weight=winner_weight,
        global_kl_weight=global_weight)
    winner, global_ = losses.kl_terms(model)
    return logits, loss, tf.stack(
        [winner + global_, winner_weight * winner + global_weight * global_])

  def step_fn(images, labels):
    perturbed = tf.stop_gradient(perturb(model, images, labels))
    with tf.GradientTape() as tape:
      logits, loss, kl = objective(perturbed, labels)
      if clean_loss_weight:
        _, clean_loss, clean_kl = objective(images, labels)
        loss = clean_loss_weight * clean_loss + (1 - clean_loss_weight) * loss
        kl = clean_loss_weight * clean_kl + (1 - clean_loss_weight) * kl
    grads = tape.gradient(loss, model.trainable_variables)
    variational.apply_gradients(optimizer, state.ibp_optimizer, grads,
                                model.trainable_variables, state.variational)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32))
    examples = tf.cast(tf.shape(labels)[0], tf.float32)
    return loss, tf.concat(
        [[correct, examples], kl / strategy.num_replicas_in_sync], axis=0)

  @tf.function
  def train_step(iterator):
    loss, stats = strategy.run(step_fn, args=next(iterator))
    return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None))

  return train_step


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy):
  """Builds the compiled evaluation step.

  Returns:
    `eval_step(batch) -> float32 [3]`: (cross-entropy sum, correct,
    examples) of one distributed (images, labels, weights) batch, summed
    over replicas; padding examples (weight 0) do not count.
  """

  def step_fn(images, labels, weights):
    logits = model(images, training=False)
    ce = losses.per_example_cross_entropy(labels, logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
    return tf.stack([tf.reduce_sum(weights * ce),
                     tf.reduce_sum(weights * correct), tf.reduce_sum(weights)])

  @tf.function
  def eval_step(batch):
    return strategy.reduce(tf.distribute.ReduceOp.SUM,
                           strategy.run(step_fn, args=batch), axis=None)

  return eval_step


def evaluate(strategy: tf.distribute.Strategy, eval_step, images: np.ndarray,
             labels: np.ndarray, global_batch_size: int) -> Dict[str, float]:
  """Clean loss and accuracy over every example of a split.

  Args:
    strategy: the run's strategy.
    eval_step: from `make_eval_step`.
    images: uint8 `[N, H, W, C]`.
    labels: int64 `[N]`.
    global_batch_size: evaluation batch over all replicas.

  Returns:
    {'loss': mean cross-entropy >= 0, 'accuracy': in [0, 1],
     'examples': N}.
  """
  dataset = strategy.distribute_datasets_from_function(
      data_lib.eval_dataset_fn(images, labels, global_batch_size))
  totals = np.zeros(3, np.float64)
  for batch in dataset:
    totals += eval_step(batch).numpy()
  ce_sum, correct, count = totals
  return {'loss': ce_sum / count, 'accuracy': correct / count,
          'examples': int(count)}

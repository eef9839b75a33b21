"""Where every stochastic layer gets the seed of its next draw.

Layers keep a `keras.random.SeedGenerator` (its state is a variable of the
layer: [seed, counter], int64) and ask `next_seed` for a stateless seed per
draw, then draw with `tf.random.stateless_*` ops or TFP's `sample(seed=...)`.
Keeping this in one place gives two guarantees without touching each layer:

  * Exact resume. A draw depends only on the generator's state, and
    `seed_states` hands every such state of a model to the training
    checkpoint (Keras does not put them in a `tf.train.Checkpoint` of the
    model by itself), so a resumed run continues the stream where the
    checkpoint left it instead of replaying it from the start.
  * Independent replicas. Under a `tf.distribute` strategy with several
    replicas (MirroredStrategy, or MultiWorkerMirroredStrategy where the
    replica id counts over all workers), the replica id is folded into the
    seed, so each replica draws its own noise, winners and attack starts,
    while every replica's generator state advances identically (and so
    stays in sync for the checkpoint).
"""

from typing import Dict, Optional

import keras
import tensorflow as tf


def _replica_id() -> Optional[tf.Tensor]:
  """This replica's id in its sync group, or None with a single replica."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return None  # Cross-replica context, or nothing to tell apart.
  return context.replica_id_in_sync_group


def next_seed(generator: keras.random.SeedGenerator,
              per_replica: bool = True) -> tf.Tensor:
  """int32 `[2]` stateless seed of one draw; advances `generator`.

  Args:
    generator: the layer's own seed generator.
    per_replica: fold the replica id into the seed when several replicas
      run in sync, so replicas draw differently. False gives every replica
      the same seed (a choice all replicas must agree on, e.g. which
      branch of the adversarial-training mixture a step takes).

  Returns:
    int32 `[2]`, different on every call (in eager mode and inside a
    `tf.function` alike) and, with `per_replica`, on every replica.
  """
  seed = tf.cast(generator.next(), tf.int32)
  replica = _replica_id() if per_replica else None
  if replica is None:
    return seed
  return tf.random.experimental.stateless_fold_in(seed, replica)


def seed_states(model: keras.Model) -> Dict[str, keras.Variable]:
  """Every seed generator state of `model`'s layers, for a checkpoint.

  Args:
    model: a built Keras model.

  Returns:
    {key: int64 `[2]` state variable}, keyed by the layer's path and the
    generator's place in it (stable for a model built from the same
    settings); pass it to `tf.train.Checkpoint(seeds=...)`.
  """
  states = {}
  for layer in model._flatten_layers(include_self=False):  # pylint: disable=protected-access
    for index, generator in enumerate(getattr(layer, '_seed_generators', ())):
      key = f'{layer.path.replace("/", ".")}.{index}'
      states[key] = generator.state
  return states

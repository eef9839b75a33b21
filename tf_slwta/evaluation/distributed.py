"""Spreading an evaluation over the devices and workers of a strategy.

Evaluation is embarrassingly parallel: every batch of test images is
attacked and scored on its own. So instead of splitting each batch across
replicas with synchronized steps (what training needs), each local device
gets a copy of the model and takes whole batches as it frees up, and each
worker of a multi-worker cluster takes every n-th batch; the chief gathers
the per-batch records (`records`) into the table. Before each batch a copy's
random streams are reset from the batch's index (`reseeder`), so a batch
draws the same randomness wherever it runs and the table is the same as on
one device.
"""

import hashlib
from typing import Callable, List, Sequence

import keras
import tensorflow as tf

from tf_slwta.evaluation import robustness
from tf_slwta.layers import randomness


def reseeder(model: keras.Model) -> Callable[[int], None]:
  """reseed(seed): sets each seed generator state of `model`
  (`randomness.seed_states`) to a state made from `seed` and the
  generator's key (distinct streams, the same every time)."""
  states = randomness.seed_states(model)

  def reseed(seed: int) -> None:
    for key, state in states.items():
      digest = hashlib.sha256(f'{seed}/{key}'.encode()).digest()
      start = int.from_bytes(digest[:4], 'little') % (2**31 - 1)
      state.assign(tf.constant([start, 0], dtype=state.dtype))

  return reseed


def local_devices(strategy: tf.distribute.Strategy) -> List[str]:
  """The devices this process's replicas of `strategy` run on."""
  return list(strategy.extended.worker_devices)


def shard(strategy: tf.distribute.Strategy) -> robustness.Shard:
  """This worker's share of the batches: the chief first, then the workers
  in TF_CONFIG order; Shard(0, 1) for single-machine strategies."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or resolver.task_type is None:
    return robustness.Shard()
  spec = resolver.cluster_spec().as_dict()
  tasks = [('chief', i) for i in range(len(spec.get('chief', [])))] + [
      ('worker', i) for i in range(len(spec.get('worker', [])))]
  return robustness.Shard(tasks.index((resolver.task_type,
                                       int(resolver.task_id))), len(tasks))


def replicas(build: Callable[[str], keras.Model],
             devices: Sequence[str]) -> List[robustness.Replica]:
  """One model copy per device, each with its reseeder.

  Args:
    build: build(device) -> the model with its weights, placed on `device`.
    devices: where the copies go (one per replica).

  Returns:
    [robustness.Replica], in `devices` order.
  """
  found = []
  for device in devices:
    model = build(device)
    found.append(robustness.Replica(
        lambda x, model=model: model(x, training=False), device,
        reseeder(model)))
  return found


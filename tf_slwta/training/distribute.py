"""Choosing a tf.distribute strategy and knowing who the chief is."""

import os

import tensorflow as tf

from tf_slwta.training import tf_config


def make_strategy(name: str) -> tf.distribute.Strategy:
  """Creates the strategy for `--strategy`; call it before any other TF op.

  Args:
    name: 'auto' (MirroredStrategy over all visible GPUs, or the CPU when
      there is none; 'multi_worker' when TF_CONFIG names several workers),
      'mirrored' (the same, explicitly), 'multi_worker'
      (MultiWorkerMirroredStrategy from TF_CONFIG) or 'one_device' (the first
      GPU, else the CPU).

  Returns:
    The strategy. Its `num_replicas_in_sync` divides the global batch.
  """
  split = _split_cpu()
  if name == 'auto' and tf_config.tf_config_workers() > 1:
    name = 'multi_worker'
  if name == 'multi_worker':  # Must come before anything starts the runtime.
    problem = tf_config.tf_config_error()
    if problem:
      raise ValueError(f'--strategy=multi_worker: {problem}')
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name in ('auto', 'mirrored'):
    cpus = tf.config.list_logical_devices('CPU')
    if split and not tf.config.list_logical_devices('GPU'):
      return tf.distribute.MirroredStrategy([d.name for d in cpus])
    return tf.distribute.MirroredStrategy()
  if name == 'one_device':
    gpus = tf.config.list_logical_devices('GPU')
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')
  raise ValueError(f'Unknown strategy {name!r}; choose auto, mirrored, '
                   f'multi_worker or one_device.')


def _split_cpu() -> bool:
  """With TF_SLWTA_LOGICAL_CPUS=n (n >= 2), splits the CPU into n logical
  devices, so the multi-device code paths (and their speed) can be tried on
  a machine without GPUs; 'auto' and 'mirrored' then use all of them.
  Returns whether it did."""
  count = int(os.environ.get('TF_SLWTA_LOGICAL_CPUS', '0') or 0)
  if count < 2:
    return False
  cpus = tf.config.list_physical_devices('CPU')
  if len(tf.config.get_logical_device_configuration(cpus[0]) or []) < 2:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
  return True


def task_id(strategy: tf.distribute.Strategy) -> int:
  """This worker's index (0 for single-machine strategies)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or resolver.task_type is None:
    return 0
  return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries and results."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or resolver.task_type is None:
    return True
  return resolver.task_type == 'chief' or (
      resolver.task_type == 'worker' and resolver.task_id == 0
      and 'chief' not in resolver.cluster_spec().as_dict())


def worker_path(path: str, strategy: tf.distribute.Strategy) -> str:
  """`path` for the chief; a private scratch folder beside it for others.

  Every MultiWorkerMirroredStrategy worker must take part in a checkpoint
  save (it is a collective op), but only the chief's copy is kept.
  """
  if is_chief(strategy):
    return path
  return os.path.join(os.path.dirname(path.rstrip('/')),
                      f'worker{task_id(strategy)}_tmp',
                      os.path.basename(path.rstrip('/')))

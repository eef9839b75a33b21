"""Reading `TF_CONFIG` (the multi-worker cluster) without loading TensorFlow.

The command line checks it while parsing flags, before TensorFlow starts.
"""

import json
import os
import socket
from typing import List


def tf_config_error() -> str:
  """Why `TF_CONFIG` cannot drive a multi-worker run, or '' if it can."""
  raw = os.environ.get('TF_CONFIG')
  if not raw:
    return ('TF_CONFIG is not set. Set it on every worker, e.g. '
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}.')
  try:
    tf_config = json.loads(raw)
    workers = tf_config['cluster']['worker']
    task = tf_config['task']
    index = int(task['index'])
  except (ValueError, KeyError, TypeError) as e:
    return f'TF_CONFIG is not valid JSON with cluster.worker and task ({e}).'
  if not workers:
    return 'TF_CONFIG lists no workers in cluster.worker.'
  if task.get('type') == 'worker' and not 0 <= index < len(workers):
    return f'TF_CONFIG task index {index} is outside its {len(workers)} workers.'
  return ''


def tf_config_workers() -> int:
  """How many workers a valid `TF_CONFIG` names (0 when it is not valid)."""
  if tf_config_error():
    return 0
  return len(json.loads(os.environ['TF_CONFIG'])['cluster']['worker'])


def is_multi_worker(strategy: str) -> bool:
  """Whether `--strategy` makes a multi-worker run here, as
  `distribute.make_strategy` decides: 'multi_worker', or 'auto' with a
  valid TF_CONFIG naming several workers."""
  return strategy == 'multi_worker' or (
      strategy == 'auto' and tf_config_workers() > 1)


def is_chief(strategy: str) -> bool:
  """Whether this process writes the run's folder, known before TF loads.

  Every process of a single-worker run does; of a multi-worker run
  (`is_multi_worker`), the TF_CONFIG task of type 'chief', else worker 0
  when the cluster has no chief (as `distribute.is_chief` decides from the
  strategy). An invalid TF_CONFIG counts as chief: the strategy refuses it
  later, naming the problem.
  """
  if not is_multi_worker(strategy) or tf_config_error():
    return True
  tf_config = json.loads(os.environ['TF_CONFIG'])
  task = tf_config['task']
  return task.get('type') == 'chief' or (
      task.get('type') == 'worker' and int(task['index']) == 0
      and 'chief' not in tf_config['cluster'])


def local_workers(count: int) -> List[str]:
  """`count` 'host:port' addresses of free ports on 127.0.0.1.

  For a cluster of local processes (tests, benchmarks, trying
  MultiWorkerMirroredStrategy on one machine). The ports are free when
  returned; another program could take one before the workers bind it.
  """
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  addresses = [f'127.0.0.1:{s.getsockname()[1]}' for s in sockets]
  for s in sockets:
    s.close()
  return addresses

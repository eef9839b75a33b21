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

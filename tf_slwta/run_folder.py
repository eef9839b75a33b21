"""A run's folder (`--output_dir`): the files that record a run.

```
<output_dir>/
  config.json     the settings the run was made with
  checkpoints/    tf.train checkpoints (model, optimizer, step)
  summaries/      TensorBoard logs
  metrics.jsonl   one JSON line of metrics per epoch
  results.json    the final epoch's metrics
```
This module reads and writes those files with plain Python (no
TensorFlow), so the command line can open a run before TensorFlow loads.
"""

import json
import os
from typing import Any, Dict, List, Optional

from tf_slwta import config as config_lib

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'
SUMMARIES_DIR = 'summaries'


class RunMismatch(ValueError):
  """`output_dir` holds a run made with other settings."""


def checkpoint_dir(output_dir: str) -> str:
  """Where a run's checkpoints live."""
  return os.path.join(output_dir, CHECKPOINTS_DIR)


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented, key-sorted JSON to `path`."""
  with open(path, 'w', encoding='utf-8') as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + '\n')


class RunFolder:
  """The files of one run, under `path`.

  Args:
    path: the run's folder (`--output_dir`); it need not exist yet.
  """

  def __init__(self, path: str):
    self.path = path

  def file(self, name: str) -> str:
    """`<path>/<name>`."""
    return os.path.join(self.path, name)

  @property
  def checkpoint_dir(self) -> str:
    """`<path>/checkpoints`."""
    return checkpoint_dir(self.path)

  @property
  def summary_dir(self) -> str:
    """`<path>/summaries` (TensorBoard)."""
    return self.file(SUMMARIES_DIR)

  def has_checkpoint(self) -> bool:
    """Whether the checkpoint manager's state file names a checkpoint."""
    state = os.path.join(self.checkpoint_dir, 'checkpoint')
    return os.path.isfile(state)

  def saved_settings(self) -> Optional[Dict[str, Any]]:
    """The run's config.json as a dict, or None when there is none."""
    path = self.file(CONFIG_FILE)
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      return json.load(f)

  def write_config(self, config: config_lib.ExperimentConfig) -> None:
    """Writes config.json (creating the folder)."""
    os.makedirs(self.path, exist_ok=True)
    write_json(self.file(CONFIG_FILE), config.to_dict())

  def check_identity(self, config: config_lib.ExperimentConfig,
                     has_checkpoint: bool) -> None:
    """Refuses a checkpoint made with settings that change its meaning.

    Args:
      config: this run's settings.
      has_checkpoint: whether the folder holds a checkpoint (only then does
        a mismatch matter).

    Raises:
      RunMismatch: the folder has checkpoints and a config.json whose
        identity fields (`config.RUN_IDENTITY_FIELDS`) differ from `config`.
    """
    saved = self.saved_settings() if has_checkpoint else None
    if saved is None:
      return
    diffs = config_lib.identity_mismatches(saved, config)
    if diffs:
      listed = '; '.join(f'{k}: {old!r} there, {new!r} now'
                         for k, (old, new) in sorted(diffs.items()))
      raise RunMismatch(
          f'{self.path} holds a run made with other settings ({listed}). '
          f'Pass a new --output_dir, or the same settings to resume it.')

  def read_metrics(self) -> List[Dict[str, Any]]:
    """Every epoch's record in metrics.jsonl, in file order."""
    path = self.file(METRICS_FILE)
    if not os.path.exists(path):
      return []
    with open(path, encoding='utf-8') as f:
      return [json.loads(l) for l in f.read().splitlines() if l.strip()]

  def append_metrics(self, record: Dict[str, Any]) -> None:
    """Adds one epoch's JSON line; a replayed epoch replaces its old line."""
    lines = [json.dumps(r, sort_keys=True) for r in self.read_metrics()
             if r.get('epoch') != record['epoch']]
    lines.append(json.dumps(record, sort_keys=True))
    with open(self.file(METRICS_FILE), 'w', encoding='utf-8') as f:
      f.write('\n'.join(lines) + '\n')

  def write_json(self, name: str, value: Any) -> None:
    """Writes `<path>/<name>` as JSON (results.json, eval_results.json)."""
    write_json(self.file(name), value)

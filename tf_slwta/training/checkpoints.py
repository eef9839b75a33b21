"""Finding a run's newest intact checkpoint, and what it was made with.

`tf.train.latest_checkpoint` trusts the `checkpoint` state file: when the
newest checkpoint's files are missing it returns None (and a run would
silently start again from step 0, overwriting the older checkpoints), and
when they are damaged the restore fails with a traceback. `newest_intact`
instead tries every `ckpt-<step>` in the folder, newest first, reads each
tensor (which checks the files' checksums), moves a damaged one aside into
`checkpoints/damaged/` with a message, and points the state file at the
checkpoint it settles on. When the run had checkpoints but none of them is
intact it refuses (`NoIntactCheckpoint`) and changes nothing: starting
again from step 0 would overwrite the run's records.

The state file holds nothing the `ckpt-<step>` files do not tell (their
steps, and timestamps that only matter to `keep_checkpoint_every_n_hours`,
which runs do not use), so a damaged one is set aside as
`checkpoint.damaged` with a note and written anew.

Each checkpoint also holds `run_settings`: the settings that give its
variables their meaning (`config.RUN_IDENTITY_FIELDS`), as JSON, so a
config.json that does not belong to the checkpoints beside it is caught.
"""

import json
import os
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from google.protobuf import text_format
import tensorflow as tf
from tensorflow.python.training import checkpoint_state_pb2  # pylint: disable=g-direct-tensorflow-import

from tf_slwta import config as config_lib
from tf_slwta import run_folder

PREFIX = 'ckpt'
DAMAGED_DIR = 'damaged'
SETTINGS_KEY = 'run_settings'
STATE_FILE = 'checkpoint'
_STEP = re.compile(rf'^{PREFIX}-(\d+)\.index$')


def candidates(directory: str) -> List[Tuple[int, str]]:
  """(step, path prefix) of every checkpoint whose index file exists, newest first."""
  if not tf.io.gfile.isdir(directory):
    return []
  found = []
  for name in tf.io.gfile.listdir(directory):
    match = _STEP.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name[:-6])))
  return sorted(found, reverse=True)


def damage(path: str) -> Optional[str]:
  """Why the checkpoint at `path` cannot be restored, or None if it can.

  Reads every tensor, so a truncated or corrupted data file is found here
  rather than half-way through a restore.
  """
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as e:  # pylint: disable=broad-except
    # Any failure to read it back makes it unusable (TF raises OpErrors,
    # and IndexError for a cut data file).
    message = getattr(e, 'message', None) or str(e) or type(e).__name__
    return message.strip().splitlines()[0][:200]
  return None


def _move_aside(directory: str, path: str) -> str:
  """Moves the files of checkpoint `path` into `<directory>/damaged/`."""
  target = os.path.join(directory, DAMAGED_DIR)
  tf.io.gfile.makedirs(target)
  stem = os.path.basename(path)
  for name in tf.io.gfile.listdir(directory):
    if name == f'{stem}.index' or name.startswith(f'{stem}.data-'):
      tf.io.gfile.rename(os.path.join(directory, name),
                         os.path.join(target, name), overwrite=True)
  return target


class NoIntactCheckpoint(run_folder.RunFolderError):
  """The run had checkpoints, and none of them can be restored."""


def _read_state(directory: str) -> Tuple[Optional[Any], Optional[str]]:
  """(the `checkpoint` state file's CheckpointState, why it is damaged).

  Both are None when there is no state file; the state is None when it is
  damaged (not text, not a CheckpointState, or naming no checkpoint).
  """
  path = os.path.join(directory, STATE_FILE)
  if not tf.io.gfile.exists(path):
    return None, None
  state = checkpoint_state_pb2.CheckpointState()
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      text_format.Parse(f.read().decode('utf-8'), state)
  except UnicodeDecodeError:
    return None, 'not text'
  except text_format.ParseError as e:
    return None, f'not a checkpoint state: {e}'
  if not state.model_checkpoint_path:
    return None, 'it names no checkpoint'
  return state, None


def _recorded(directory: str, state) -> List[str]:
  """The checkpoint paths a CheckpointState lists, newest last."""
  names = list(state.all_model_checkpoint_paths) if state else []
  if state and state.model_checkpoint_path not in names:
    names.append(state.model_checkpoint_path)
  return [os.path.join(directory, n) for n in names]


def _refusal(directory: str, damaged: List[Tuple[str, str]],
             lost: List[str]) -> NoIntactCheckpoint:
  """The one-line refusal when no checkpoint of a run can be restored."""
  output_dir = os.path.dirname(os.path.normpath(directory))
  if damaged:
    what = 'every checkpoint in {} is damaged ({})'.format(
        directory, '; '.join(f'{os.path.basename(p)}: {why}'
                             for p, why in damaged))
  else:
    what = (f'the checkpoints this run saved are gone from {directory} '
            f'({", ".join(lost)})')
  return NoIntactCheckpoint(
      f'No intact checkpoint in {output_dir}: {what}. Nothing was changed '
      f'(training from step 0 would overwrite the records of the epochs '
      f'trained). Put back intact copies of those files, pass a new '
      f'--output_dir, or delete {output_dir} to start over deliberately.')


def newest_intact(directory: str, announce=print,
                  repair: bool = True) -> Optional[str]:
  """The newest restorable checkpoint in `directory`, or None for a new run.

  With `repair`, damaged checkpoints newer than it are moved to
  `<directory>/damaged/` (nothing is deleted), a damaged state file is set
  aside as `checkpoint.damaged`, and the `checkpoint` state file is
  rewritten to list the intact ones, so the checkpoint manager keeps
  rotating them normally. Each skipped checkpoint gets one line through
  `announce`.

  Args:
    directory: a run's checkpoints folder.
    announce: called with each one-line message.
    repair: move damaged files aside and fix the state file (the chief
      does; other workers only read).

  Returns:
    The checkpoint's path prefix; None only when the run never saved one.

  Raises:
    NoIntactCheckpoint: the run saved checkpoints (found damaged, listed in
      the state file, or moved to damaged/ earlier) and none is intact;
      nothing is moved.
  """
  recorded, state_problem = _read_state(directory)
  newest_recorded = recorded.model_checkpoint_path if recorded else None
  if newest_recorded:
    newest_recorded = os.path.join(directory, newest_recorded)
  found = candidates(directory)
  chosen, damaged = None, []
  for _, path in found:
    problem = damage(path)
    if problem is None:
      chosen = path
      break
    damaged.append((path, problem))
  if chosen is None:
    aside = os.path.join(directory, DAMAGED_DIR)
    lost = [os.path.basename(p) for p in _recorded(directory, recorded)]
    if not lost and tf.io.gfile.isdir(aside):
      lost = sorted({n.split('.')[0] for n in tf.io.gfile.listdir(aside)
                     if n.endswith('.index')})
      lost = [f'{DAMAGED_DIR}/{n}' for n in lost]
    if damaged or lost or state_problem:
      raise _refusal(directory, damaged, lost or [
          f'{STATE_FILE} ({state_problem}) names them'])
    return None
  if state_problem:
    path = os.path.join(directory, STATE_FILE)
    if repair:
      tf.io.gfile.rename(path, path + run_folder.DAMAGED_SUFFIX, overwrite=True)
      announce(f'note: {path} is damaged ({state_problem}); moved it to '
               f'{path + run_folder.DAMAGED_SUFFIX} and wrote it anew from '
               f'the checkpoint files.')
    else:
      announce(f'note: {path} is damaged ({state_problem}); read the '
               f'checkpoint files instead.')
  for path, problem in damaged:
    if repair:
      where = _move_aside(directory, path)
      announce(f'note: checkpoint {path} is damaged ({problem}); moved it to '
               f'{where}/ and used the newest intact one instead.')
    else:
      announce(f'note: checkpoint {path} is damaged ({problem}); skipped it.')
  skipped = {os.path.normpath(p) for p, _ in damaged}
  if (newest_recorded and os.path.normpath(newest_recorded) not in skipped and
      not tf.io.gfile.exists(newest_recorded + '.index')):
    announce(f'note: the newest checkpoint {newest_recorded} is missing; '
             f'using {chosen} instead.')
  if repair and (damaged or chosen != newest_recorded):
    _write_state(directory, chosen, [
        path for _, path in reversed(found)
        if tf.io.gfile.exists(path + '.index') and
        _step_of(path) <= _step_of(chosen)])
  return chosen


def _write_state(directory: str, chosen: str, intact: List[str]) -> None:
  """Rewrites the `checkpoint` state file (a CheckpointState text proto)."""
  lines = [f'model_checkpoint_path: "{os.path.basename(chosen)}"']
  lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"'
            for p in intact]
  lines += [f'all_model_checkpoint_timestamps: '
            f'{tf.io.gfile.stat(p + ".index").mtime_nsec / 1e9}'
            for p in intact]
  lines.append(f'last_preserved_timestamp: {time.time()}')
  run_folder.atomic_write(os.path.join(directory, 'checkpoint'),
                          '\n'.join(lines) + '\n')


def _step_of(path: str) -> int:
  return int(path.rsplit('-', 1)[1])


def settings_json(config: config_lib.ExperimentConfig) -> str:
  """The identity settings of `config` as the JSON a checkpoint keeps."""
  full = config.to_dict()
  return json.dumps({section: {name: full[section][name] for name in names}
                     for section, names in
                     config_lib.RUN_IDENTITY_FIELDS.items()}, sort_keys=True)


def saved_settings(path: str) -> Optional[Dict[str, Any]]:
  """The identity settings stored in checkpoint `path`, or None (older runs)."""
  reader = tf.train.load_checkpoint(path)
  key = f'{SETTINGS_KEY}/.ATTRIBUTES/VARIABLE_VALUE'
  if not reader.has_tensor(key):
    return None
  return json.loads(reader.get_tensor(key).decode('utf-8'))


def check_settings(path: str, config: config_lib.ExperimentConfig,
                   only: Optional[Tuple[str, ...]] = None) -> None:
  """Refuses a checkpoint made with other identity settings than `config`.

  Args:
    path: a checkpoint prefix.
    config: the settings it is about to be used with.
    only: the 'section.field' keys to compare (e.g.
      `config.MODEL_IDENTITY` to evaluate a trained model, whatever trained
      it); None compares every identity field.

  Raises:
    run_folder.RunMismatch: naming each differing setting.
  """
  saved = saved_settings(path)
  if saved is None:
    return
  diffs = config_lib.identity_mismatches(saved, config)
  if only is not None:
    diffs = {k: v for k, v in diffs.items() if k in only}
  if diffs:
    listed = '; '.join(f'{k}: {old!r} in the checkpoint, {new!r} now'
                       for k, (old, new) in sorted(diffs.items()))
    folder = os.path.dirname(os.path.dirname(path))
    raise run_folder.RunMismatch(
        f'{path} was made with other settings ({listed}) than '
        f'{os.path.join(folder, run_folder.CONFIG_FILE)} and the command '
        f'line give. Put back the config.json that came with these '
        f'checkpoints, or pass a new --output_dir.')

"""A run's folder (`--output_dir`) is the record of the run.

```
<output_dir>/
  config.json     the settings the run was made with (all of them)
  checkpoints/    tf.train checkpoints (model, optimizer, step, random streams)
  summaries/      TensorBoard logs
  metrics.jsonl   one JSON line of metrics per epoch
  results.json    the final epoch's metrics
  .lock           held while a process works in the folder
```
Every mode but `grid` opens a run by its folder: `settings_for` takes the
run's own config.json and lays over it only the settings given on the
command line that the mode uses, refusing those that really conflict with
the run. Files are replaced atomically (temporary file, then rename), so a
kill or a full disk leaves the previous version whole.

Plain Python for local folders (no TensorFlow), so the command line can
open a run and refuse a conflict before TensorFlow loads. A remote folder
(gs://..., as a multi-worker run may share) goes through TensorFlow's file
system instead; such a folder has no lock, and a rename there is a copy.
"""

import contextlib
import dataclasses
import json
import os
import re
import shlex
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tf_slwta import config as config_lib
from tf_slwta import folder_lock

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
LOCK_FILE = folder_lock.LOCK_FILE
CHECKPOINTS_DIR = 'checkpoints'
SUMMARIES_DIR = 'summaries'
DAMAGED_SUFFIX = '.damaged'
# A checkpoint's index file; its number is the global step it was saved at.
_CHECKPOINT_INDEX = re.compile(r'^ckpt-(\d+)\.index$')

# What each mode takes from the command line over the run's config.json:
# 'section.field' keys, or 'section.*' for a whole section. Model settings
# that only act at test time may change; the rest of the model is the run's.
_TEST_TIME_MODEL = ('model.pni_at_test', 'model.lwta_temperature',
                    'model.lwta_test_temperature', 'model.lwta_deterministic',
                    'model.ibp_threshold')
_EVAL_DATA = ('data.eval_examples', 'data.eval_batch_size', 'data.data_dir',
              'data.tfds_data_dir', 'data.download')
MODE_TAKES = {
    'train': ('*',),
    'evaluate': ('attack.*', 'train.strategy') + _EVAL_DATA + _TEST_TIME_MODEL,
    'audit': ('attack.*', 'audit.*', 'train.strategy') + _EVAL_DATA +
             _TEST_TIME_MODEL,
    'certify': ('certify.*', 'train.strategy', 'train.seed') + _EVAL_DATA +
               _TEST_TIME_MODEL,
    'export': ('export.*', 'attack.mc_samples') + _TEST_TIME_MODEL,
    'predict': ('serve.*', 'export.name') + _EVAL_DATA,
}


RunFolderError = folder_lock.RunFolderError


class RunMismatch(RunFolderError):
  """`output_dir` holds a run made with other settings."""


RunInUse = folder_lock.RunInUse


def is_remote(path: str) -> bool:
  """Whether `path` is a URL of a file system TensorFlow reaches (gs://...)."""
  return '://' in path


def _gfile():
  # Only for remote paths: importing TensorFlow takes seconds, which a local
  # run folder never pays before its flags are checked.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def exists(path: str) -> bool:
  """`os.path.exists`, for local and remote paths."""
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def _isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def _listdir(path: str) -> List[str]:
  if is_remote(path):
    return [n.rstrip('/') for n in _gfile().listdir(path)]
  return os.listdir(path)


def _makedirs(path: str) -> None:
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def _read_text(path: str) -> str:
  if is_remote(path):
    with _gfile().GFile(path) as f:
      return f.read()
  with open(path, encoding='utf-8', errors='replace') as f:
    return f.read()


def checkpoint_dir(output_dir: str) -> str:
  """Where a run's checkpoints live."""
  return os.path.join(output_dir, CHECKPOINTS_DIR)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str, text: str) -> None:
  """Replaces `path` with `text` all at once (temporary file, then rename).

  A reader sees the old file or the new one, never a part; if the write
  fails (a kill, a full disk), the old file stays as it was.

  Raises:
    OSError: the folder cannot be written (full disk, permissions).
  """
  if is_remote(path):
    temporary = f'{path}.tmp'
    with _gfile().GFile(temporary, 'w') as f:
      f.write(text)
    _gfile().rename(temporary, path, overwrite=True)
    return
  directory = os.path.dirname(path) or '.'
  fd, temporary = tempfile.mkstemp(
      prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=directory)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, FILE_MODE)
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise


def probe_writable(path: str, flag: str) -> None:
  """Refuses `path` (a folder, maybe not made yet) if it cannot be written.

  Writes and removes a temporary file in `path` or its nearest existing
  parent: permissions alone do not tell (root, read-only mounts).

  Raises:
    RunFolderError: naming `flag` and the fix.
  """
  if is_remote(path):
    return  # Found out on the first write.
  existing = path
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(existing)
  existing = existing or '.'
  if not os.path.isdir(existing):
    raise RunFolderError(f'{flag}={path}: {existing} is a file, not a '
                         f'folder; pass a folder.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise RunFolderError(
        f'{flag}={path} cannot be written ({existing}: {e.strerror}); pass a '
        f'folder you can write to.') from e


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented, key-sorted JSON to `path`, atomically."""
  atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + '\n')


def read_json(path: str, what: str) -> Optional[Any]:
  """The JSON value in `path`, or None if there is no such file.

  Raises:
    RunFolderError: the file is empty or not valid JSON; the message names
      it, says what it records (`what`) and how to go on.
  """
  if not exists(path):
    return None
  text = _read_text(path)
  try:
    if not text.strip():
      raise ValueError('it is empty')
    return json.loads(text)
  except ValueError as e:
    problem = (f'{e.msg} at line {e.lineno}' if isinstance(
        e, json.JSONDecodeError) else str(e))
    raise RunFolderError(
        f'{path} is damaged ({problem}); it records {what}. Restore it from '
        f'a copy, or delete it and pass the run\'s flagfile again to '
        f'rewrite it.') from e


def check_transfer_source(path: str, recipe: Optional[str] = None) -> None:
  """Refuses a `--transfer_from` folder that holds no trained run.

  Args:
    path: the source run's folder.
    recipe: the flagfile of the run being attacked, as typed, for the
      command the message gives (a placeholder when None).

  Raises:
    RunFolderError: no config.json or no checkpoint there (or a damaged
      config.json); the message gives the command that trains the twin.
  """
  folder = RunFolder(path)
  missing = ('no config.json' if folder.saved_settings() is None else
             'no checkpoint' if not folder.has_checkpoint() else '')
  if missing:
    raise RunFolderError(
        f'--transfer_from={path} holds no trained run ({missing}); train the '
        f'source model first, e.g. the recipe\'s ReLU twin: python main.py '
        f'--flagfile={recipe or "RECIPE.cfg"} --activation=relu --noibp '
        f'--output_dir={path}')


# The sections every run's config.json has had; the others may be missing
# in a run made before they existed, and take their defaults.
REQUIRED_SECTIONS = ('data', 'model', 'train')


def _kind(value: Any) -> str:
  """What a JSON value is, as a user would say it."""
  if isinstance(value, bool):
    return 'true/false'
  if isinstance(value, int):
    return 'a whole number'
  if isinstance(value, float):
    return 'a number'
  if isinstance(value, str):
    return 'text'
  if isinstance(value, (list, tuple)):
    return 'a list'
  if isinstance(value, dict):
    return 'a section'
  return 'null'


def _fits(value: Any, default: Any) -> bool:
  """Whether a config.json value has the type of the field's `default`."""
  if default is None:
    return True  # Optional fields (grid_overrides) hold anything or null.
  if isinstance(default, bool) or not isinstance(default, (int, float)):
    kind = tuple if isinstance(default, tuple) else type(default)
    return isinstance(value, (list, tuple) if kind is tuple else kind)
  # A whole number may stand for a float; never true/false for a number.
  wanted = int if isinstance(default, int) else (int, float)
  return isinstance(value, wanted) and not isinstance(value, bool)


def settings_problem(saved: Any) -> Optional[str]:
  """What makes a config.json value unusable as a run's settings, or None.

  Checks the shape only: a JSON object, the sections every run has
  (`REQUIRED_SECTIONS`) as objects, and each known field of the type its
  default has. Values are checked when the settings are built.

  Args:
    saved: the parsed JSON of a config.json.

  Returns:
    A phrase completing "config.json ...", e.g. 'has no "model" section'.
  """
  if not isinstance(saved, dict):
    return f'holds {_kind(saved)}, not an object of settings sections'
  defaults = config_lib.ExperimentConfig().to_dict()
  missing = [s for s in REQUIRED_SECTIONS if s not in saved]
  if missing:
    listed = ', '.join(f'"{s}"' for s in missing)
    return (f'has no {listed} section{"s" * (len(missing) > 1)} (it is cut '
            f'short or was edited)')
  for name, value in saved.items():
    default = defaults.get(name)
    if isinstance(default, dict):
      if not isinstance(value, dict):
        return f'has {_kind(value)} for its "{name}" section, not a section'
      for field, item in value.items():
        if field in default and not _fits(item, default[field]):
          return (f'has {name}.{field} = {json.dumps(item)[:40]} '
                  f'({_kind(item)}), where {_kind(default[field])} belongs')
    elif name in defaults and not _fits(value, default):
      return (f'has {name} = {json.dumps(value)[:40]} ({_kind(value)}), '
              f'where {_kind(default)} belongs')
  return None


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

  def check_usable(self, writable: bool = True) -> None:
    """Refuses a path that is a file, or (`writable`) one that cannot be written.

    Raises:
      RunFolderError: naming --output_dir and the fix.
    """
    if exists(self.path) and not _isdir(self.path):
      raise RunFolderError(
          f'--output_dir={self.path} is a file, not a folder; pass a folder '
          f'(it is made if missing).')
    if writable:
      probe_writable(self.path, '--output_dir')

  def has_checkpoint(self) -> bool:
    """Whether checkpoints/ holds any checkpoint index file."""
    folder = self.checkpoint_dir
    return _isdir(folder) and any(
        n.endswith('.index') for n in _listdir(folder))

  def saved_settings(self) -> Optional[Dict[str, Any]]:
    """The run's config.json as a dict, or None when there is none.

    Raises:
      RunFolderError: config.json is empty or damaged.
    """
    path = self.file(CONFIG_FILE)
    saved = read_json(path, "the run's settings")
    problem = None if saved is None else settings_problem(saved)
    if problem:
      raise RunFolderError(
          f'{path} {problem}, so it no longer says how the run was made. '
          f'Put back the config.json that came with the run, or delete it '
          f'and pass the flags (or flagfile) the run was trained with: the '
          f'checkpoints check that they match.')
    return saved

  def write_config(self, config: config_lib.ExperimentConfig) -> None:
    """Writes config.json atomically (creating the folder).

    Only training writes it: the other modes read the run's settings and
    must leave its record as the training made it.

    Raises:
      RunFolderError: `config.mode` is not 'train'.
    """
    if config.mode != 'train':
      raise RunFolderError(
          f'--mode={config.mode} must not rewrite {self.file(CONFIG_FILE)}; '
          f'only --mode=train records a run\'s settings.')
    _makedirs(self.path)
    atomic_write(self.file(CONFIG_FILE), json.dumps(
        config.to_dict(), indent=2, sort_keys=True, allow_nan=False) + '\n')

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

  def settings_for(self, config: config_lib.ExperimentConfig,
                   given: Mapping[str, str]
                   ) -> Tuple[config_lib.ExperimentConfig, List[str]]:
    """The settings `config.mode` runs with on this run.

    The run's config.json is the base; of the settings given on the command
    line (`given`), those the mode uses (`MODE_TAKES`) replace the run's.
    A given setting that changes what the checkpoints mean (the model, the
    data set, or for training any `config.RUN_IDENTITY_FIELDS`) is refused;
    other given settings the mode does not use are ignored with a note.
    Without a config.json, `config` is used as it is.

    Args:
      config: the settings from the command line.
      given: {'section.field': '--flag=value'} of the flags the user gave
        (on the command line or in a flagfile).

    Returns:
      (settings, notes): the settings and one-line notes for the user.

    Raises:
      RunMismatch: a given setting conflicts with the run, naming its flag.
      RunFolderError: config.json is damaged.
    """
    saved = self.saved_settings() if config.mode != 'grid' else None
    if saved is None:
      return config, []
    try:
      base = config_lib.ExperimentConfig.from_dict(saved)
    except (TypeError, ValueError, AttributeError) as e:
      raise RunFolderError(
          f'{self.file(CONFIG_FILE)} holds settings this version cannot use '
          f'({e}). Restore the original file, or delete it and pass the '
          f'run\'s flagfile again.') from e
    merged = {section: dict(values) if isinstance(values, dict) else values
              for section, values in base.to_dict().items()}
    wanted = config.to_dict()
    for top in ('mode', 'output_dir', 'evaluate_robustness', 'grid',
                'grid_overrides'):
      merged[top] = wanted[top]
    takes = MODE_TAKES[config.mode]
    identity = ([f'{s}.{n}' for s, names in
                 config_lib.RUN_IDENTITY_FIELDS.items() for n in names]
                if config.mode == 'train' else config_lib.MODEL_IDENTITY)
    conflicts, ignored, taken = [], [], set()
    for key, flag in sorted(given.items()):
      section, name = key.split('.')
      old, new = merged[section][name], wanted[section][name]
      if old == new:
        continue
      if key in identity and self.has_checkpoint():
        conflicts.append(f'{flag} (the run has {_shown(old)})')
      elif '*' in takes or f'{section}.*' in takes or key in takes:
        merged[section][name] = new
        taken.add(flag)
      else:
        ignored.append(flag)
    # A flag that sets fields in two sections applies if the mode takes one.
    ignored = sorted(set(ignored) - taken)
    if conflicts:
      raise RunMismatch(
          f'{self.path} holds a run made with other settings: '
          f'{"; ".join(conflicts)}. --mode={config.mode} takes the run\'s '
          f'own settings from {self.file(CONFIG_FILE)}: drop '
          f'{"that flag" if len(conflicts) == 1 else "those flags"}, or pass '
          f'a new --output_dir.')
    notes = [f'note: {", ".join(ignored)} '
             f'{"does" if len(ignored) == 1 else "do"} not apply to '
             f'--mode={config.mode}; it uses the run\'s own settings from '
             f'{self.file(CONFIG_FILE)}.'] if ignored else []
    return config_lib.ExperimentConfig.from_dict(merged), notes

  def read_metrics(self) -> List[Dict[str, Any]]:
    """Every epoch's record in metrics.jsonl, in file order.

    Lines that are not valid JSON (a write cut short before atomic writes)
    are left out; `repair_metrics` keeps them aside.
    """
    return self._metrics()[0]

  def _metrics(self) -> Tuple[List[Dict[str, Any]], List[str]]:
    path = self.file(METRICS_FILE)
    if not exists(path):
      return [], []
    records, damaged = [], []
    for line in _read_text(path).splitlines():
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError:
        record = None
      if isinstance(record, dict) and 'epoch' in record:
        records.append(record)
      else:
        damaged.append(line)
    return records, damaged

  def repair_metrics(self) -> Optional[str]:
    """Rewrites metrics.jsonl without its damaged lines; says so, or None.

    The damaged file is kept as metrics.jsonl.damaged.
    """
    records, damaged = self._metrics()
    if not damaged:
      return None
    path = self.file(METRICS_FILE)
    atomic_write(path + DAMAGED_SUFFIX, _read_text(path))
    self._write_metrics(records)
    return (f'note: {path} had {len(damaged)} damaged line(s); kept the '
            f'{len(records)} intact one(s) and moved the file to '
            f'{path + DAMAGED_SUFFIX}.')

  def _write_metrics(self, records: List[Dict[str, Any]]) -> None:
    atomic_write(self.file(METRICS_FILE), ''.join(
        json.dumps(r, sort_keys=True) + '\n' for r in records))

  def append_metrics(self, record: Dict[str, Any]) -> None:
    """Adds one epoch's JSON line; a replayed epoch replaces its old line."""
    self._write_metrics([r for r in self.read_metrics()
                         if r.get('epoch') != record['epoch']] + [record])

  def write_json(self, name: str, value: Any) -> None:
    """Writes `<path>/<name>` as JSON atomically (results, eval results)."""
    write_json(self.file(name), value)

  def read_results(self) -> Optional[Dict[str, Any]]:
    """results.json, or None when missing or damaged (it can be rebuilt)."""
    try:
      value = read_json(self.file(RESULTS_FILE), "the run's final metrics")
    except RunFolderError:
      return None
    return value if isinstance(value, dict) else None

  def locked(self, announce=print):
    """Holds the folder's lock while a `with` block runs (`folder_lock.locked`).

    Raises:
      RunInUse: another live process holds it; the message names it.
    """
    if is_remote(self.path):  # No flock on remote file systems.
      return contextlib.nullcontext()
    return folder_lock.locked(self.path, announce)


def _shown(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ','.join(str(v) for v in value) or "''"
  return str(value)


@dataclasses.dataclass(frozen=True)
class TrainingStatus:
  """How far a run's training got, told from its folder alone.

  Attributes:
    output_dir: the run's folder.
    step: the global step of its newest checkpoint (by file name; 0 when
      there is none): what the model there has trained and a resume
      continues from.
    epochs: the epochs it is set to train (config.json's train.epochs).
    steps_per_epoch: optimizer steps per epoch, or None when the folder
      does not tell (no epoch finished, and config.json gives no size).
  """
  output_dir: str
  step: int
  epochs: int
  steps_per_epoch: Optional[int]

  @property
  def finished(self) -> bool:
    """Whether the newest checkpoint is at (or past) the last epoch's end."""
    if self.steps_per_epoch is None:
      return False  # Epoch 1 never ended: metrics.jsonl has no line.
    return self.step >= self.epochs * self.steps_per_epoch

  @property
  def description(self) -> str:
    """One phrase, e.g. 'stopped at step 6 of 24 (3 epochs of 8 steps):
    epoch 1 of 3 not finished' or 'trained 3 epochs (step 24)'."""
    if self.finished:
      return f'trained {self.epochs} epochs (step {self.step})'
    if not self.step:
      return f'not trained yet (no checkpoint; set to {self.epochs} epochs)'
    if self.steps_per_epoch is None:
      return (f'stopped at step {self.step}: epoch 1 of {self.epochs} not '
              f'finished')
    done, within = divmod(self.step, self.steps_per_epoch)
    total = (f'{self.epochs * self.steps_per_epoch} ({self.epochs} epochs of '
             f'{self.steps_per_epoch} steps)')
    if within:
      return (f'stopped at step {self.step} of {total}: epoch {done + 1} of '
              f'{self.epochs} not finished')
    return (f'stopped at step {self.step} of {total}: {done} of '
            f'{self.epochs} epochs trained')

  @property
  def warning(self) -> Optional[str]:
    """A one-line warning for a run whose training stopped part-way, or None.

    None too for a run with no checkpoint: there is no model to warn about.
    """
    if self.finished or not self.step:
      return None
    command = shlex.quote(f'--output_dir={self.output_dir}')
    return (f'warning: the training of {self.output_dir} is not finished: '
            f'{self.description}; the model is used as it stands. Run '
            f'python main.py {command} to finish it.')


def _steps_per_epoch(folder: RunFolder,
                     saved: Optional[Dict[str, Any]]) -> Optional[int]:
  """Steps per epoch from metrics.jsonl, else from config.json's sizes.

  Each metrics line is written at the end of an epoch with `step` =
  epoch x steps per epoch, so any intact line tells; results.json is left
  from the last call that returned, and may be older than the checkpoints.
  """
  for record in reversed(folder.read_metrics()):
    step, epoch = record.get('step'), record.get('epoch')
    if (isinstance(step, int) and isinstance(epoch, int) and epoch > 0 and
        step > 0 and step % epoch == 0):
      return step // epoch
  data = (saved or {}).get('data', {})
  examples = data.get('train_examples') or 0
  split = config_lib.SPLIT_SIZES.get(data.get('dataset'), (0, 0))[0]
  if split and not data.get('data_dir'):  # Files of data_dir may hold fewer.
    examples = min(examples, split) if examples else split
  batch = data.get('batch_size') or 0
  if examples and batch and examples >= batch and (
      split or data.get('dataset') == 'synthetic'):
    return examples // batch
  return None


def newest_checkpoint_step(output_dir: str) -> int:
  """The step of the newest `ckpt-<step>` in `<output_dir>/checkpoints`, or 0.

  By file name only (no TensorFlow): the checkpoint may still be damaged.
  """
  folder = checkpoint_dir(output_dir)
  if not _isdir(folder):
    return 0
  steps = [int(m.group(1)) for m in map(_CHECKPOINT_INDEX.match,
                                       _listdir(folder)) if m]
  return max(steps, default=0)


def training_status(output_dir: str) -> Optional[TrainingStatus]:
  """Whether the run in `output_dir` finished training, and how far it got.

  Plain Python: reads the checkpoint file names, config.json and
  metrics.jsonl, never TensorFlow. The newest checkpoint's step is what was
  trained (a run killed mid-epoch resumes from there); config.json says how
  many epochs were asked for; metrics.jsonl says how many steps an epoch
  has.

  Returns:
    A `TrainingStatus`, or None when `output_dir` holds no run (no
    config.json) or a config.json that does not say its epochs.

  Raises:
    RunFolderError: config.json is damaged.
  """
  folder = RunFolder(output_dir)
  saved = folder.saved_settings()
  epochs = ((saved or {}).get('train') or {}).get('epochs')
  if not isinstance(epochs, int):
    return None
  return TrainingStatus(output_dir, newest_checkpoint_step(output_dir),
                        epochs, _steps_per_epoch(folder, saved))


def warn_if_unfinished(output_dir: str, announce=print) -> None:
  """Announces `TrainingStatus.warning` when the run's training is unfinished."""
  status = training_status(output_dir)
  if status is not None and status.warning:
    announce(status.warning)

"""What several modes share: running one, the strategy, the perturbation."""

import contextlib
import errno
import sys
from typing import Callable, Dict, Optional

from absl import flags
from absl import logging
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.defenses import mixture
from tf_slwta.evaluation import report
from tf_slwta.export import client
from tf_slwta.modes import summary
from tf_slwta.training import distribute
from tf_slwta.training import interrupts
from tf_slwta.training import loop
from tf_slwta.training import steps

# Failures a user can fix (missing data, diverged training, a mismatched or
# busy output_dir, a bad grid flagfile, an existing export version, a
# serving error, a full disk): printed as one line, exit code 1.
KNOWN_FAILURES = (data_lib.DataError, loop.TrainingDiverged, loop.OutOfSpace,
                  run_folder.RunFolderError, client.ServingError,
                  FileNotFoundError, FileExistsError, ValueError, flags.Error)


def _os_failure(e: Exception) -> Optional[str]:
  """One line for a file-system failure a user can fix, or None."""
  code = getattr(e, 'errno', None)
  where = getattr(e, 'filename', None) or ''
  if isinstance(e, tf.errors.ResourceExhaustedError) or code in (
      errno.ENOSPC, errno.EDQUOT) or 'No space left' in str(e):
    return (f'No space left on the device{f" of {where}" if where else ""}; '
            f'files written before are whole. Free some space and run the '
            f'same command to continue.')
  if isinstance(e, (PermissionError, tf.errors.PermissionDeniedError)) or (
      code in (errno.EACCES, errno.EPERM, errno.EROFS)):
    text = getattr(e, 'message', None) or str(e)
    return (f'Cannot write {where or text.splitlines()[0]}: permission denied '
            f'or a read-only file system. Pass a folder you can write to.')
  return None


def run_mode(run: Callable, config: config_lib.ExperimentConfig,
             folder: run_folder.RunFolder) -> int:
  """Runs one mode's `run(config, folder)`; returns the exit code.

  Prints the settings in one line first. Known failures become one line on
  stderr and exit code 1; a run stopped by a signal (after saving) prints
  its line and exits with 128 + the signal number.
  """
  # TF logs an INFO line through absl at every checkpoint save; keep it out.
  logging.get_absl_logger().addFilter(
      lambda record: 'Sharding callback' not in record.getMessage())
  print(summary.line(config), flush=True)
  try:
    run(config, folder)
  except interrupts.Interrupted as e:
    print(str(e), file=sys.stderr)
    return e.exit_code
  except KNOWN_FAILURES as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except (OSError, tf.errors.OpError) as e:
    message = _os_failure(e)
    if message is None:
      raise
    print(f'error: {message}', file=sys.stderr)
    return 1
  return 0


def chief_lock(folder: run_folder.RunFolder,
               strategy: tf.distribute.Strategy):
  """The folder's lock for the chief; nothing for other workers.

  Every worker of a multi-worker run works in the same folder; the chief
  alone writes its records, so it alone holds the lock. The command line
  takes it before TensorFlow loads (`tf_slwta.cli.main.folder_lock`); the
  lock is re-entrant within a process, so this takes it again at once
  there, and really takes it for a mode run from Python.
  """
  if distribute.is_chief(strategy):
    return folder.locked()
  return contextlib.nullcontext()


def make_strategy(config: config_lib.ExperimentConfig
                  ) -> tf.distribute.Strategy:
  """The run's strategy (`--strategy`); its replicas are logged."""
  strategy = distribute.make_strategy(config.train.strategy)
  logging.info('Strategy %s with %d replica(s).', type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def perturbation(config: config_lib.ExperimentConfig,
                 strategy: tf.distribute.Strategy) -> steps.PerturbFn:
  """The training batches' perturbation: the attack mixture, or none."""
  if not config.train.mixture:
    return steps.identity_perturbation
  return mixture.AttackMixture(config.train.mixture, config.attack,
                               config.train.noise_sigma, strategy,
                               seed=config.train.seed,
                               gradient=config.train.mixture_gradient)


def write_html_report(config: config_lib.ExperimentConfig, model=None) -> None:
  """Draws the run's figures into report.html and says where it is."""
  print(f'Report (tables and figures): {report.write_report(config, model)}',
        flush=True)


def print_table(rows: Dict[str, Dict[str, float]], stream=sys.stdout) -> None:
  """Prints {row name: {'accuracy': ..., 'loss': ...}} as a small table."""
  stream.write(f'{"split":<10} {"accuracy (%)":>13} {"loss":>8} {"examples":>9}\n')
  for name, row in rows.items():
    stream.write(f'{name:<10} {100 * row["accuracy"]:>13.2f} '
                 f'{row["loss"]:>8.4f} {row["examples"]:>9d}\n')
  stream.flush()

"""The tf_slwta command: train, evaluate and attack robust image classifiers.

`python main.py` in the repository, the `tf-slwta` console script and
`python -m tf_slwta` of an installed package all run `console()`. With no
flagfile the command runs the default job, the shipped recipe
quickstart.cfg; a flag typed on the command line overrides the same flag in
any flagfile. A run that already has a folder (`--output_dir`) is opened
from its own config.json. `--help` lists the flags by section (README.md).

The flags become one `ExperimentConfig` (tf_slwta/cli), and `--mode` picks
the module of tf_slwta/modes that runs it. Importing this module defines
the flags on absl's global `FLAGS`.
"""

import contextlib
import functools
import os
import signal
import sys
from typing import List, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta import startup
from tf_slwta.training import tf_config

# The default job's flagfile: the recipe shipped in the package.
QUICKSTART = cli.packaged_flagfile('quickstart.cfg')
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)


class _Terminated(Exception):
  """SIGTERM outside the training loop (which saves a checkpoint first)."""


def _on_sigterm(signum, frame):
  del signum, frame
  raise _Terminated()


# The modes that write in the run's folder, under its lock.
WRITES_FOLDER = ('train', 'evaluate', 'audit', 'certify')


def folder_lock(config: config_lib.ExperimentConfig,
                folder: run_folder.RunFolder):
  """The run folder's lock for this command, or nothing.

  Taken before TensorFlow loads, so a second process on the same folder is
  refused in a fraction of a second rather than after TensorFlow's start-up
  (20-50 s on a loaded 2-core CPU). Only for the modes that write the folder
  (`WRITES_FOLDER`), and only on the chief of a multi-worker run (the other
  workers share the folder and write nothing of it). The mode's own
  `common.chief_lock` then finds it held by this process.
  """
  if config.mode in WRITES_FOLDER and tf_config.is_chief(
      config.train.strategy):
    return folder.locked()
  return contextlib.nullcontext()


def check_transfer_source(config: config_lib.ExperimentConfig,
                          command: Sequence[str]) -> None:
  """Refuses, before TensorFlow loads, a --transfer_from with no trained run.

  Evaluation and the audit load the source model whenever it is set. The
  message's command names the recipe typed on `command` (the command line
  as typed). A remote source is checked when it is loaded.

  Raises:
    run_folder.RunFolderError: naming the folder and the command to train
      the twin.
  """
  source = config.attack.transfer_from
  if (source and config.mode in ('train', 'evaluate', 'audit')
      and not run_folder.is_remote(source)):
    run_folder.check_transfer_source(source, cli.recipe_flagfile(command))


def main(argv: List[str], command: Sequence[str] = ()) -> int:
  """Runs the parsed command: settings, then the --mode's module.

  Args:
    argv: what absl left after parsing `FLAGS` (the program name alone).
    command: the command line as typed, for messages that name its recipe.

  Returns:
    The exit code: 0, 1 for a failure the user can fix (one line on
    stderr), 2 for a refused flag.
  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = cli.config_from_flags(FLAGS)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    folder = run_folder.RunFolder(config.output_dir)
    if config.mode != 'grid':
      folder.check_usable(writable=config.mode in WRITES_FOLDER)
    config, notes = folder.settings_for(config, cli.given_fields(FLAGS))
    check_transfer_source(config, command)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # absl's INFO lines: pass -v 0.
  for note in notes:
    print(note, flush=True)
  with contextlib.ExitStack() as held:
    try:
      held.enter_context(folder_lock(config, folder))
    except run_folder.RunFolderError as e:  # Another process works there.
      print(f'error: {e}', file=sys.stderr)
      return 1
    return _run_mode(config, folder)


def _run_mode(config: config_lib.ExperimentConfig,
              folder: run_folder.RunFolder) -> int:
  """Loads TensorFlow and the modes, then runs `config.mode` on `folder`."""
  with startup.quiet_tensorflow():
    # Imported only now, so that flag parsing and its refusals come before
    # TensorFlow loads: a refused flag takes 0.35 s, importing the modes (and
    # TensorFlow) 12-16 s on the 2-core CPU of BENCHMARKS.md; and so that a
    # MultiWorkerMirroredStrategy is made before any other TF op.
    from tf_slwta.modes import audit, certify, common, evaluate, export, grid, predict, train  # pylint: disable=g-import-not-at-top,g-multiple-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # Says once there is no GPU driver.
  modes = {'train': train.run, 'evaluate': evaluate.run, 'audit': audit.run,
           'certify': certify.run, 'grid': grid.run, 'export': export.run,
           'predict': predict.run}
  return common.run_mode(modes[config.mode], config, folder)


def command_line(argv: List[str]) -> List[str]:
  """`argv` with the default job's flagfile if needed and flagfiles read.

  The flags read from flagfiles come first and the typed ones last, so a
  typed flag wins (`cli.expand_flagfiles`).
  """
  return cli.expand_flagfiles(cli.with_default_flagfile(argv, QUICKSTART))


def run(argv: List[str]) -> int:
  """Runs one whole command in this process; returns its exit code.

  What `python main.py ARGS` does, for `argv = ['main.py', *ARGS]`, without
  starting a process (the README's commands are tested this way).
  """
  if cli.wants_help(argv):
    print(cli.help_text())
    return 0
  try:
    expanded = command_line(argv)
    FLAGS.unparse_flags()
    rest = FLAGS(expanded)
  except (cli.FlagfileError, flags.Error) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return main(rest, command=argv)


def console() -> None:
  """The command as a process: `python main.py`, `tf-slwta`, `python -m
  tf_slwta`. Exits with the command's code (128 + N after signal N)."""
  if cli.wants_help(sys.argv):
    try:
      print(cli.help_text(), flush=True)
    except BrokenPipeError:  # `python main.py --help | head`.
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  try:
    argv = command_line(sys.argv)
  except cli.FlagfileError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  signal.signal(signal.SIGTERM, _on_sigterm)
  try:
    app.run(functools.partial(main, command=sys.argv), argv=argv,
            flags_parser=cli.parse_or_exit)
  except KeyboardInterrupt:
    print('Interrupted by SIGINT; every file in the run folder is whole. Run '
          'the same command to continue.', file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
  except _Terminated:
    print('Stopped by SIGTERM; every file in the run folder is whole. Run '
          'the same command to continue.', file=sys.stderr)
    sys.exit(128 + signal.SIGTERM)
  except BrokenPipeError:  # The reader went away (`python main.py | head`).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)

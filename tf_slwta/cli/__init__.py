"""Command line: absl flag definitions, validation, flags -> ExperimentConfig.

This is the only package that reads absl flags, and it does nothing else:
`define_flags` declares them (on any `FlagValues`, so tests can parse
flagfiles in isolation), `config_from_flags` checks them and turns them
once into the frozen `ExperimentConfig` that the modes (`tf_slwta.modes`)
and the library take, and `given_fields` says which settings the user gave.
`flagfiles` reads flagfiles (nested ones relative to the file that names
them, the shipped recipes by name from any folder), `main` is the command
itself (`python main.py`, `tf-slwta`, `python -m tf_slwta`) and `usage`
prints `--help`. Nothing here imports TensorFlow, so a bad
flag is refused in a fraction of a second.
"""

import os
import re
import sys
from typing import Dict, List, Sequence

from absl import flags

from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta.cli import convert
from tf_slwta.cli import definitions
from tf_slwta.cli import flagfiles
from tf_slwta.cli.flagfiles import FlagfileError  # pylint: disable=unused-import
from tf_slwta.cli.flagfiles import expand_flagfiles  # pylint: disable=unused-import
from tf_slwta.cli.flagfiles import find_flagfile  # pylint: disable=unused-import
from tf_slwta.cli.flagfiles import glob_flagfiles  # pylint: disable=unused-import
from tf_slwta.cli.flagfiles import packaged_flagfile  # pylint: disable=unused-import
from tf_slwta.cli.flagfiles import recipe_flagfile  # pylint: disable=unused-import
from tf_slwta.cli.usage import help_text  # pylint: disable=unused-import
from tf_slwta.cli.usage import wants_help  # pylint: disable=unused-import

SECTIONS = definitions.SECTIONS
# The recipes shipped in the package (tf_slwta/flags; flags/ in a checkout).
FLAGS_DIR = flagfiles.PACKAGED_DIR


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Declares every tf_slwta flag and its validators on `fv`."""
  definitions.define(fv)
  convert.register_validators(fv)


def config_from_flags(fv: flags.FlagValues = flags.FLAGS
                      ) -> config_lib.ExperimentConfig:
  """Builds the run's `ExperimentConfig` from parsed flags.

  Raises:
    flags.ValidationError: a value or combination is refused; the message
      names the flag and says what would do.
  """
  try:
    return convert.config_from_values(fv)
  except ValueError as e:
    message = str(e)
    named = re.match(r'(\w+)[= ]', message)
    if named and named.group(1) in fv and not message.startswith('--'):
      message = '--' + message  # Name the flag as the user typed it.
    raise flags.ValidationError(message) from e


def given_fields(fv: flags.FlagValues = flags.FLAGS) -> Dict[str, str]:
  """{'section.field': '--flag=value'} of every flag the user gave.

  A flag counts as given when it was on the command line or in a flagfile
  (the default flagfile included, when one was put in); the others hold
  their defaults. `run_folder.RunFolder.settings_for` lays the given ones
  over a run's own settings.
  """
  given = {}
  for flag_name, fields in convert.FIELDS.items():
    flag = fv[flag_name]
    if flag.present:
      value = flag.serialize().lstrip('-')
      for section, field in fields:
        given[f'{section}.{field}'] = (f'--{value}' if value
                                       else f'--{flag_name}')
  return given


def _argv_value(argv: Sequence[str], name: str):
  """The last value of `--name=value` / `--name value` in `argv`, or None."""
  value = None
  for i, arg in enumerate(argv):
    for prefix in (f'--{name}=', f'-{name}='):
      if arg.startswith(prefix):
        value = arg[len(prefix):]
    if arg in (f'--{name}', f'-{name}') and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def with_default_flagfile(argv: List[str], flagfile: str) -> List[str]:
  """Puts `--flagfile=flagfile` first when the command needs the default job.

  `python main.py` runs the default job, and `python main.py --epochs=1`
  runs it with one change (a typed flag overrides every flagfile, see
  `expand_flagfiles`); a user's own flagfile replaces it entirely. It is
  not put in when the run to open already has a config.json (the run's own
  settings are the base then), nor for modes other than train: they take
  their settings from the run's folder. `--mode` and `--output_dir` are
  read from the typed flags, the ones that win.
  """
  if any(a.startswith(('--flagfile', '-flagfile')) for a in argv[1:]):
    return list(argv)
  if (_argv_value(argv[1:], 'mode') or 'train') != 'train':
    return list(argv)
  output_dir = _argv_value(argv[1:], 'output_dir') or definitions.OUTPUT_DIR
  if run_folder.exists(os.path.join(output_dir, run_folder.CONFIG_FILE)):
    return list(argv)
  return [argv[0], f'--flagfile={flagfile}'] + list(argv[1:])


def parse_flagfiles(paths: Sequence[str]) -> config_lib.ExperimentConfig:
  """Settings from flagfiles alone (later ones override earlier ones).

  Parsed on fresh `FlagValues`, so the process's own flags are untouched;
  used by --mode=grid for each row. Nested flagfiles are read relative to
  the file that names them.
  """
  fv = flags.FlagValues()
  define_flags(fv)
  fv(expand_flagfiles(['main.py'] + [f'--flagfile={p}' for p in paths]))
  return config_from_flags(fv)


def parse_or_exit(argv: List[str]) -> List[str]:
  """`absl.app.run`'s flag parser: a refused flag is one line, exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e} (python main.py --help lists the flags)',
          file=sys.stderr)
    sys.exit(2)

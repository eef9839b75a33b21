"""Command line: absl flag definitions, validation, flags -> ExperimentConfig.

This is the only package that reads absl flags, and it does nothing else:
`define_flags` declares them (on any `FlagValues`, so tests can parse
flagfiles in isolation), validators refuse bad values while the command
line is parsed, before any work, and `config_from_flags` turns them once
into the frozen `ExperimentConfig` that the modes (`tf_slwta.modes`) and the
library take. Nothing here imports TensorFlow.
"""

from typing import List, Sequence

from absl import flags

from tf_slwta import config as config_lib
from tf_slwta.cli import convert
from tf_slwta.cli import definitions
from tf_slwta.cli.convert import config_from_flags  # pylint: disable=unused-import

SECTIONS = definitions.SECTIONS


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Declares every tf_slwta flag and its validators on `fv`."""
  definitions.define(fv)
  convert.register_validators(fv)


def with_default_flagfile(argv: List[str], flagfile: str) -> List[str]:
  """Puts `--flagfile=flagfile` first unless `argv` names a flagfile.

  So `python main.py` runs the default job, and `python main.py --epochs=1`
  runs it with one change; a user's own flagfile replaces it entirely.
  """
  if any(a.startswith(('--flagfile', '-flagfile')) for a in argv[1:]):
    return list(argv)
  return [argv[0], f'--flagfile={flagfile}'] + list(argv[1:])


def parse_flagfiles(paths: Sequence[str]) -> config_lib.ExperimentConfig:
  """Settings from flagfiles alone (later ones override earlier ones).

  Parsed on fresh `FlagValues`, so the process's own flags are untouched;
  used by --mode=grid for each row.
  """
  fv = flags.FlagValues()
  define_flags(fv)
  fv(['main.py'] + [f'--flagfile={p}' for p in paths])
  return config_from_flags(fv)

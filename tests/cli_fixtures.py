"""Parsing a command line as main.py does, on fresh FlagValues."""

import os

from absl import flags

from tf_slwta import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_command(*args, cwd=REPO):
  """(ExperimentConfig, given fields) of `python main.py ARGS` run in `cwd`.

  Flagfiles named on the command line are read relative to `cwd` (the
  repository root, as the README's commands are run), nested ones relative
  to the file naming them.
  """
  args = [f'--flagfile={os.path.join(cwd, a.split("=", 1)[1])}'
          if a.startswith('--flagfile=') else a for a in args]
  fv = flags.FlagValues()
  cli.define_flags(fv)
  fv(cli.expand_flagfiles(['main.py', *args]))
  return cli.config_from_flags(fv), cli.given_fields(fv)

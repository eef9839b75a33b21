"""Parsing a command line as main.py does; copying the repository as a clone."""

import os
import shutil
import subprocess

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


def _tracked_files():
  """The files a clone of this work tree has (as committed, with what is not
  committed yet), or outside git the tree without what git ignores."""
  listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'],
                          cwd=REPO, capture_output=True, text=True)
  if listed.returncode == 0:
    return listed.stdout.split()
  ignored = {'.git', '.venv', 'runs', 'saved_models', '__pycache__',
             '.pytest_cache', 'build', 'dist'}
  files = []
  for folder, dirs, names in os.walk(REPO):
    links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
    dirs[:] = [d for d in dirs if d not in ignored and d not in links]
    files += [os.path.relpath(os.path.join(folder, n), REPO)
              for n in names + links if not n.endswith('.egg-info')]
  return files


def copy_repository(target):
  """Copies the repository's files as a fresh clone has them to `target`
  (the flags/ link stays a link), without runs, builds or the venv."""
  for name in _tracked_files():
    source, copy = os.path.join(REPO, name), os.path.join(target, name)
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    if os.path.islink(source):  # flags/ -> tf_slwta/flags.
      os.symlink(os.readlink(source), copy)
    elif os.path.isfile(source):
      shutil.copy2(source, copy)

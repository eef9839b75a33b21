"""Reading flagfiles, nested ones relative to the file that names them.

The rule for which value wins: a flag typed on the command line overrides
the same flag read from any flagfile, wherever the two stand on the command
line; among flagfiles (and lines of one flagfile) the later one wins. So
`python main.py --mode=evaluate --flagfile=RECIPE.cfg` evaluates even if
RECIPE.cfg says `--mode=train`, and a flag added to a README command does
what it says whether it was typed before or after the flagfile.

absl reads `--flagfile=F` lines inside a flagfile relative to the working
directory, so a flagfile that includes another only works from the folder
it was written for. `expand_flagfiles` reads every `--flagfile=F` of a
command line, recursively, reading a nested F relative to the file that
names it (or, for flagfiles written the old way, relative to the working
directory when no such file is there). Lines are read as absl reads them:
blank lines and lines starting with '#' or '//' are skipped.

The recipes ship inside the package (`PACKAGED_DIR`, tf_slwta/flags; the
repository's top-level flags/ is a link to it), so they are found by name
from any folder and from an installed wheel: `--flagfile=quickstart.cfg`,
`--flagfile=attacks/seed.cfg` or, as typed in the repository,
`--flagfile=flags/quickstart.cfg`. A path that exists relative to the
working directory (or beside the including flagfile) comes first.
"""

import glob
import importlib.resources
import os
from typing import List, Optional, Sequence, Tuple

_DIRECTIVES = ('--flagfile=', '-flagfile=')
# The recipes shipped with the package; flags/ in the repository links here.
PACKAGED_DIR = str(importlib.resources.files('tf_slwta') / 'flags')
_REPOSITORY_FOLDER = 'flags'  # How the README names PACKAGED_DIR.


class FlagfileError(ValueError):
  """A flagfile is missing, unreadable, or includes itself."""


def _in_package(name: str) -> str:
  """`name` (e.g. 'quickstart.cfg', 'flags/attacks/seed.cfg') inside
  `PACKAGED_DIR`, with the repository's leading flags/ dropped."""
  parts = os.path.normpath(name).split(os.sep)
  if parts[0] == _REPOSITORY_FOLDER:
    parts = parts[1:]
  return os.path.join(PACKAGED_DIR, *parts)


def find_flagfile(name: str) -> str:
  """The file `--flagfile=name` reads.

  `name` itself when it exists (relative to the working directory) or is
  absolute; else the packaged recipe of that name if there is one; else
  `name` (reading it then fails, naming it).
  """
  name = os.path.expanduser(name)
  if os.path.isabs(name) or os.path.exists(name):
    return name
  packaged = _in_package(name)
  return packaged if os.path.isfile(packaged) else name


def glob_flagfiles(pattern: str) -> List[str]:
  """The flagfiles a glob pattern names, sorted (the packaged ones when the
  working directory has none), e.g. 'flags/seed_table/[0-9]*.cfg'."""
  pattern = os.path.expanduser(pattern)
  found = sorted(glob.glob(pattern))
  if not found and not os.path.isabs(pattern):
    found = sorted(glob.glob(_in_package(pattern)))
  return found


def packaged_flagfile(name: str) -> str:
  """The path of the packaged recipe `name` (e.g. 'quickstart.cfg')."""
  return _in_package(name)


def _resolve(name: str, including: Optional[str]) -> str:
  if including is None:
    return find_flagfile(name)
  name = os.path.expanduser(name)
  if os.path.isabs(name):
    return name
  beside = os.path.join(os.path.dirname(including), name)
  if os.path.exists(beside):
    return beside
  return find_flagfile(name)


def _read(path: str, including: Optional[str], stack: List[str]) -> List[str]:
  where = f' (named in {including})' if including else ''
  real = os.path.realpath(path)
  if real in stack:
    raise FlagfileError(f'--flagfile={path}{where} includes itself; remove '
                        f'the loop.')
  try:
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise FlagfileError(
        f'--flagfile={path}{where} cannot be read ({e.strerror}); check the '
        f'path (nested flagfiles are read relative to the file naming them; '
        f'the shipped recipes are found by name, e.g. '
        f'--flagfile=quickstart.cfg, from {PACKAGED_DIR}).') from e
  expanded = []
  for line in lines:
    line = line.strip()
    if not line or line.startswith(('#', '//')):
      continue
    if line.startswith(_DIRECTIVES):
      nested = line.split('=', 1)[1]
      expanded += _read(_resolve(nested, path), path, stack + [real])
    else:
      expanded.append(line)
  return expanded


def expand_flagfiles(argv: Sequence[str]) -> List[str]:
  """`argv` with its flagfiles read: their flags first, then the typed ones.

  absl lets the later of two values win, so putting every flag read from a
  flagfile (in the order the flagfiles are named, each one's nested
  flagfiles in place) before the flags typed on the command line (in their
  own order) makes a typed flag override any flagfile's, wherever it stood.

  Args:
    argv: a command line, program name first; flagfiles named on it as
      `--flagfile=F` or `--flagfile F` are read relative to the working
      directory.

  Returns:
    The command line with no flagfile left in it: the program name, the
    flagfiles' flags, then the typed arguments.

  Raises:
    FlagfileError: a flagfile is missing or includes itself; the message
      names it and the file that named it.
  """
  names, typed = _split(argv)
  read = [flag for name in names
          for flag in _read(_resolve(name, None), None, [])]
  return [argv[0]] + read + typed


def _split(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(the flagfiles named on `argv`, its other arguments), each in order."""
  names, typed, args = [], [], list(argv[1:])
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith(_DIRECTIVES):
      names.append(arg.split('=', 1)[1])
    elif arg in ('--flagfile', '-flagfile') and i + 1 < len(args):
      names.append(args[i + 1])
      i += 1
    else:
      typed.append(arg)
    i += 1
  return names, typed


def recipe_flagfile(argv: Sequence[str]) -> Optional[str]:
  """The recipe named on `argv`, as typed: the last flagfile that sets
  --output_dir (attack and mode flagfiles do not), or None. For messages
  that give a command to type."""
  recipes = [name for name in _split(argv)[0] if any(
      flag.startswith(('--output_dir=', '-output_dir='))
      for flag in _read(_resolve(name, None), None, []))]
  return recipes[-1] if recipes else None

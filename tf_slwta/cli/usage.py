"""`python main.py --help`: the project's flags, by section."""

import re
import textwrap
from typing import Optional, Sequence

from absl import flags

from tf_slwta.cli import definitions

HELP_ARGS = ('-h', '-help', '--help', '--helpshort', '-?')
_RUN = ('mode', 'output_dir', 'evaluate_robustness', 'flagfile')
_GRID = ('grid', 'grid_overrides')
_TITLES = {
    'run': 'What to do and where (every mode)',
    'data': 'Data',
    'model': 'Model (stochastic LWTA, IBP, noise injection)',
    'train': 'Training and adversarial training (--mode=train)',
    'attack': 'Attacks (--mode=evaluate, --evaluate_robustness, training '
              'mixtures)',
    'audit': 'The gradient-masking checklist (--mode=audit)',
    'certify': 'Randomized smoothing (--mode=certify)',
    'grid': 'Many runs at once (--mode=grid)',
    'export': 'SavedModel for TF Serving (--mode=export)',
    'serve': 'Classifying through TF Serving (--mode=predict)',
}
_INTRO = """\
tf_slwta: train, evaluate and attack robust image classifiers.

usage: python main.py [--flagfile=FILE] [--flag=value ...]
       tf-slwta ... or python -m tf_slwta ... (the same, once installed)

With no flagfile, `python main.py` runs the default job,
flags/quickstart.cfg, and flags given override it. The recipes shipped with
tf_slwta (flags/ in the repository) are found by name from any folder:
--flagfile=quickstart.cfg, --flagfile=attacks/seed.cfg; a path that exists
comes first. A flagfile holds one flag per line (nested --flagfile lines are
read relative to it). A flag typed on the command line overrides the same
flag in any flagfile, before or after it; of two flagfiles, the later one
wins. Recipes do not set --mode (train is the default): `--mode=evaluate
--flagfile=RECIPE.cfg` evaluates. A run that already has a folder
(--output_dir) is opened from its own config.json: evaluate, certify, export
and predict take the model and data from it, and the command line adds only
what they use.
`python main.py --helpfull` also lists TensorFlow's and absl's flags."""


def wants_help(argv: Sequence[str]) -> bool:
  """Whether the command line asks for `--help` (or -h, --helpshort)."""
  return any(arg in HELP_ARGS for arg in argv[1:])


def _line(flag: flags.Flag) -> str:
  default = flag.default_as_str or "''"
  choices = getattr(flag.parser, 'enum_values', None)
  kind = '|'.join(choices) if choices else flag.flag_type().replace(
      'comma separated list of strings', 'comma-separated list')
  head = f'  --{flag.name}={default.strip(chr(39))}  ({kind})'
  text = re.sub(r'^<[^>]*>: ', '', flag.help or '')  # absl's enum prefix.
  body = textwrap.fill(text, width=78, initial_indent='      ',
                       subsequent_indent='      ')
  return f'{head}\n{body}'


def help_text(fv: Optional[flags.FlagValues] = None) -> str:
  """The flags of every section with their defaults and help."""
  if fv is None:
    fv = flags.FlagValues()
    definitions.define(fv)
  sections = {'run': _RUN, **definitions.SECTIONS, 'grid': _GRID}
  shown, parts = set(), [_INTRO]
  for section, names in sections.items():
    lines = []
    for name in names:
      if name in shown or name == 'flagfile':
        continue
      shown.add(name)
      lines.append(_line(fv[name]))
    if section == 'run':
      lines.append('  --flagfile=FILE\n      Read flags from FILE (repeatable).')
    parts.append(f'{_TITLES[section]}:\n' + '\n'.join(lines))
  return '\n\n'.join(parts) + '\n'

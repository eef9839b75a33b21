"""tf_slwta command line: train, evaluate and attack robust image classifiers.

`python main.py` runs the default job, flags/quickstart.cfg. Any flag given
on the command line overrides it; `--flagfile=F` replaces it. See README.md.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tf_slwta import cli

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'flags',
                          'quickstart.cfg')
cli.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  return cli.run(cli.config_from_flags(flags.FLAGS))


if __name__ == '__main__':
  app.run(main, argv=cli.with_default_flagfile(sys.argv, QUICKSTART))

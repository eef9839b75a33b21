"""tf_slwta command line: train, evaluate and attack robust image classifiers.

`python main.py` runs the default job, flags/quickstart.cfg. Any flag given
on the command line overrides it; `--flagfile=F` replaces it. See README.md.

The flags become one `ExperimentConfig` (tf_slwta/cli), and `--mode` picks
the module of tf_slwta/modes that runs it.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from tf_slwta import cli
from tf_slwta import run_folder

QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'flags',
                          'quickstart.cfg')
cli.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = cli.config_from_flags(flags.FLAGS)
  # Imported only now, so that flag parsing and its refusals come before
  # TensorFlow loads (importing it takes seconds) and so that a
  # MultiWorkerMirroredStrategy is made before any other TF op.
  from tf_slwta.modes import audit, certify, common, evaluate, export, grid, predict, train  # pylint: disable=g-import-not-at-top,g-multiple-import
  modes = {'train': train.run, 'evaluate': evaluate.run, 'audit': audit.run,
           'certify': certify.run, 'grid': grid.run, 'export': export.run,
           'predict': predict.run}
  # TF logs an INFO line through absl at every checkpoint save; keep it out.
  logging.get_absl_logger().addFilter(
      lambda record: 'Sharding callback' not in record.getMessage())
  try:
    modes[config.mode](config, run_folder.RunFolder(config.output_dir))
  except common.KNOWN_FAILURES as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  app.run(main, argv=cli.with_default_flagfile(sys.argv, QUICKSTART))

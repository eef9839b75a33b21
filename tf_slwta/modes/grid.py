"""--mode=grid: train and evaluate many flagfiles, then one table."""

import dataclasses
import glob
import os
from typing import Optional

import tensorflow as tf

from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import report
from tf_slwta.evaluation import robustness
from tf_slwta.modes import common
from tf_slwta.modes import train


def row_flagfiles(patterns) -> list:
  """The grid's flagfiles: patterns expanded in order (the seed table by default).

  Raises:
    FileNotFoundError: nothing matched, or a named flagfile is missing.
  """
  # Found as flagfiles are: relative to the working directory, else among
  # the shipped recipes (so the seed table runs from any folder).
  patterns = patterns or (os.path.join('flags', 'seed_table', '[0-9]*.cfg'),)
  rows = [path for pattern in patterns
          for path in (cli.glob_flagfiles(pattern) if glob.has_magic(pattern)
                       else [cli.find_flagfile(pattern)])]
  if not rows:
    raise FileNotFoundError(f'--grid={",".join(patterns)} matches no '
                            f'flagfile; pass --grid=A.cfg,B.cfg or a pattern '
                            f'that matches some.')
  for path in rows:
    if not os.path.exists(path):
      raise FileNotFoundError(f'Grid flagfile {path} does not exist.')
  return rows


def run(config: config_lib.ExperimentConfig, folder: run_folder.RunFolder,
        strategy: Optional[tf.distribute.Strategy] = None) -> dict:
  """Trains and evaluates every row, then writes grid.md/.csv/.json/.html.

  Rows already trained and attacked with the same settings are reused.

  Returns:
    {'md', 'csv', 'json', 'html'}: the paths of the grid's table.
  """
  del folder  # The table goes beside the rows' runs.
  strategy = strategy or common.make_strategy(config)
  results = []
  for path in row_flagfiles(config.grid):
    row_config = cli.parse_flagfiles(
        [path] + ([config.grid_overrides] if config.grid_overrides else []))
    row_config = dataclasses.replace(row_config, mode='train',
                                     evaluate_robustness=True)
    print(f'\n=== grid row {path} -> {row_config.output_dir} ===', flush=True)
    clean, attack_rows = train.run(
        row_config, run_folder.RunFolder(row_config.output_dir), strategy,
        reuse_robustness=True)
    results.append({'row': os.path.splitext(os.path.basename(path))[0],
                    'flagfile': path, 'output_dir': row_config.output_dir,
                    'clean_accuracy': clean['accuracy'],
                    'attacks': attack_rows})
  # The table goes beside the runs it sums up (runs/seed_table/ by default),
  # for one row as for several: never into another run's folder.
  paths = robustness.write_grid(results, os.path.commonpath(
      [os.path.dirname(os.path.normpath(r['output_dir'])) or '.'
       for r in results]))
  paths['html'] = report.write_grid_report(paths['json'])  # Links each row.
  print(f'\nGrid of {len(results)} runs (also in {paths["md"]}, '
        f'{paths["csv"]}, {paths["json"]}, {paths["html"]}):\n')
  with open(paths['md'], encoding='utf-8') as f:
    print(f.read())
  return paths

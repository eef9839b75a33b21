"""What several modes share: the strategy, the perturbation, printing."""

import sys
from typing import Dict

from absl import flags
from absl import logging
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.defenses import mixture
from tf_slwta.evaluation import report
from tf_slwta.export import client
from tf_slwta.training import distribute
from tf_slwta.training import loop
from tf_slwta.training import steps

# Failures a user can fix (missing data, diverged training, a mismatched
# output_dir, a bad grid flagfile, an existing export version, a serving
# error): main.py prints them as one line and exits with code 1.
KNOWN_FAILURES = (data_lib.DataError, loop.TrainingDiverged,
                  run_folder.RunMismatch, client.ServingError,
                  FileNotFoundError, FileExistsError, ValueError, flags.Error)


def make_strategy(config: config_lib.ExperimentConfig
                  ) -> tf.distribute.Strategy:
  """The run's strategy (`--strategy`), logged with the run's settings."""
  strategy = distribute.make_strategy(config.train.strategy)
  logging.info('Strategy %s with %d replica(s); settings:\n%s',
               type(strategy).__name__, strategy.num_replicas_in_sync,
               config.to_json())
  return strategy


def perturbation(config: config_lib.ExperimentConfig,
                 strategy: tf.distribute.Strategy) -> steps.PerturbFn:
  """The training batches' perturbation: the attack mixture, or none."""
  if not config.train.mixture:
    return steps.identity_perturbation
  return mixture.AttackMixture(config.train.mixture, config.attack,
                               config.train.noise_sigma, strategy)


def write_html_report(config: config_lib.ExperimentConfig, model=None) -> None:
  """Draws the run's figures into report.html and says where it is."""
  print(f'Report (tables and figures): {report.write_report(config, model)}',
        flush=True)


def print_table(rows: Dict[str, Dict[str, float]], stream=sys.stdout) -> None:
  """Prints {row name: {'accuracy': ..., 'loss': ...}} as a small table."""
  stream.write(f'{"split":<10} {"accuracy (%)":>13} {"loss":>8} {"examples":>9}\n')
  for name, row in rows.items():
    stream.write(f'{name:<10} {100 * row["accuracy"]:>13.2f} '
                 f'{row["loss"]:>8.4f} {row["examples"]:>9d}\n')
  stream.flush()

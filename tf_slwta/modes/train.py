"""--mode=train: train (or resume) a run, then score and report it."""

from typing import Optional

import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta.modes import common
from tf_slwta.modes import evaluate
from tf_slwta.training import distribute
from tf_slwta.training import loop
from tf_slwta.training import state


def run(config: config_lib.ExperimentConfig, folder: run_folder.RunFolder,
        strategy: Optional[tf.distribute.Strategy] = None,
        reuse_robustness: bool = False):
  """Trains into `folder`, then with --evaluate_robustness attacks the model.

  The chief holds the folder's lock throughout (see `RunFolder.locked`).

  Args:
    config: the run's settings.
    folder: the run's folder (`config.output_dir`).
    strategy: the strategy to train under; made from `config` when None.
    reuse_robustness: keep a robustness table already made on the final
      checkpoint with the same attack settings (--mode=grid).

  Returns:
    (clean test metrics {'accuracy', 'loss', 'examples'}, robustness rows or
    None).
  """
  strategy = strategy or common.make_strategy(config)
  chief = distribute.is_chief(strategy)
  with common.chief_lock(folder, strategy):
    record = loop.train(config, strategy,
                        perturb=common.perturbation(config, strategy))
    clean = {'accuracy': record['test/accuracy'], 'loss': record['test/loss'],
             'examples': record['test/examples']}
    attack = config.evaluate_robustness and bool(config.attack.attacks)
    model = state.restore_model(config, strategy) if chief and (
        attack or config.model.ibp or config.model.activation == 'lwta'
    ) else None
    rows = evaluate.attack_and_report(config, strategy, model, clean, attack,
                                      reuse_robustness)
  return clean, rows

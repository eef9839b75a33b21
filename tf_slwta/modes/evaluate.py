"""--mode=evaluate: clean and attacked accuracy of a run's latest checkpoint."""

import os
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import loaded_run
from tf_slwta import run_folder
from tf_slwta.evaluation import distributed
from tf_slwta.evaluation import records
from tf_slwta.evaluation import report
from tf_slwta.evaluation import robustness
from tf_slwta.layers import ibp
from tf_slwta.modes import common
from tf_slwta.training import distribute
from tf_slwta.training import state
from tf_slwta.training import steps

Arrays = Tuple[np.ndarray, np.ndarray]
EVAL_RESULTS_FILE = 'eval_results.json'


def clean_metrics(config: config_lib.ExperimentConfig,
                  strategy: tf.distribute.Strategy, model: keras.Model,
                  test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Clean test metrics of `model`; writes `<output_dir>/eval_results.json`.

  Args:
    config: the run's settings (data and output_dir).
    strategy: the strategy `model` was built under.
    model: the classifier (logits).
    test_arrays: (uint8 images `[N, H, W, C]`, int64 labels `[N]`); the
      configured test split when None.

  Returns:
    {'loss': mean cross-entropy, 'accuracy' in [0, 1], 'examples'}.
  """
  images, labels = test_arrays or data_lib.load_arrays(config.data, 'test')
  result = steps.evaluate(strategy, steps.make_eval_step(model, strategy),
                          images, labels, config.data.eval_batch_size)
  if distribute.is_chief(strategy):
    run_folder.RunFolder(config.output_dir).write_json(EVAL_RESULTS_FILE,
                                                       result)
  return result


def evaluate_checkpoint(config: config_lib.ExperimentConfig,
                        strategy: tf.distribute.Strategy,
                        test_arrays: Optional[Arrays] = None
                        ) -> Dict[str, float]:
  """Clean test metrics of the run's latest checkpoint (see `clean_metrics`)."""
  return clean_metrics(config, strategy, state.restore_model(config, strategy),
                       test_arrays)


def transfer_source(run_dir: str, strategy: tf.distribute.Strategy):
  """The logits function of the model in `run_dir` (None for '').

  The source of the transfer attack: built from the run's own config.json
  and its latest checkpoint, called with training=False.

  Raises:
    run_folder.RunFolderError: `run_dir` has no config.json or no
      checkpoint; the message says how to train a twin.
  """
  if not run_dir:
    return None
  run_folder.check_transfer_source(run_dir)
  del strategy  # The source runs where the default strategy puts it.
  source = loaded_run.load_run(run_dir).model
  return lambda x: source(x, training=False)


def checkpoint_identity(output_dir: str) -> dict:
  """What names a run's newest intact checkpoint wherever the folder lies:
  {'step': its step, 'digest': a checksum of its index file (which holds
  every tensor's checksum), or None when there is no checkpoint}."""
  path = state.latest_checkpoint(output_dir)
  if not path:
    return {'step': 0, 'digest': None}
  return {'step': int(path.rsplit('-', 1)[1]),
          'digest': records.file_digest(path + '.index')}


def evaluation_identity(config: config_lib.ExperimentConfig) -> dict:
  """What an attack evaluation's outcomes depend on, with no path in it.

  The scoring rule, the checkpoint (by content, `checkpoint_identity`), the
  model settings (test-time temperatures and noise change the outcomes),
  the test images and batch size, and the attack settings (a transfer
  source by its checkpoint's content). `records.key` of it names the
  evaluation's folder and stamps its record files, so a moved or copied
  run folder keeps its record, and an earlier table is reused only when it
  matches.
  """
  settings = config.to_dict()
  attack = dict(settings['attack'])
  if attack.get('transfer_from'):
    attack['transfer_from'] = checkpoint_identity(attack['transfer_from'])
  return {'scoring': robustness.SCORING, 'dataset': config.data.dataset,
          'model': config.model.name, 'model_settings': settings['model'],
          'checkpoint_identity': checkpoint_identity(config.output_dir),
          'eval_examples': config.data.eval_examples,
          'eval_batch_size': config.data.eval_batch_size,
          'attack_identity': attack}


def evaluation_meta(config: config_lib.ExperimentConfig) -> dict:
  """`evaluation_identity` and, for people and reports, where it was made:
  the run folder, the checkpoint's path and the attack settings as given."""
  return {**evaluation_identity(config), 'output_dir': config.output_dir,
          'checkpoint': state.latest_checkpoint(config.output_dir),
          'attack_settings': config.to_dict()['attack']}


def evaluation_folder(config: config_lib.ExperimentConfig, kind: str,
                      identity: dict) -> str:
  """`<output_dir>/evaluations/<kind>-step<checkpoint step>-<identity key>`:
  where one evaluation keeps its record and tables (its history entry)."""
  return os.path.join(config.output_dir, records.EVALUATIONS_DIR,
                      f'{kind}-step{report.checkpoint_step(config.output_dir)}'
                      f'-{records.key(identity)}')


def table_notes(output_dir: str) -> List[str]:
  """Notes for a run's robustness tables: that its training is unfinished,
  if it is (`run_folder.training_status`)."""
  status = run_folder.training_status(output_dir)
  if status is None or status.warning is None:
    return []
  return [f'Made on a partly trained model: {status.description}.']


def scale_out(config: config_lib.ExperimentConfig,
              strategy: tf.distribute.Strategy) -> dict:
  """How an evaluation spreads over the strategy: one model copy per local
  device (each restored from the run's latest checkpoint, with its
  reseeder) and this worker's share of the batches.

  Returns:
    {'replicas', 'shard'}: keyword arguments of
    `robustness.evaluate_robustness` and `audit.run_audit`.
  """
  build = lambda device: state.restore_model(
      config, tf.distribute.OneDeviceStrategy(device))
  return {'replicas': distributed.replicas(
              build, distributed.local_devices(strategy)),
          'shard': distributed.shard(strategy)}


def attack_and_report(config: config_lib.ExperimentConfig,
                      strategy: tf.distribute.Strategy,
                      model: Optional[keras.Model], clean: Dict[str, float],
                      attack: bool, reuse_robustness: bool = False
                      ) -> Optional[List[dict]]:
  """Attacks `model` if asked, prints the results, writes report.html.

  Every worker attacks its share of the batches (`scale_out`); only the
  chief assembles and reports them, other workers return None.

  Args:
    config: the run's settings.
    strategy: the run's strategy.
    model: the restored model, or None when nothing needs it.
    clean: clean test metrics {'accuracy', 'loss', 'examples'}.
    attack: run `config.attack`'s attacks.
    reuse_robustness: keep an earlier robustness table made on the same
      checkpoint with the same settings instead of attacking again.

  Returns:
    The robustness rows, or None when no attack ran.
  """
  chief = distribute.is_chief(strategy)
  rows = None
  if attack:
    identity = evaluation_identity(config)
    rows = robustness.load_report(config.output_dir, identity) if (
        reuse_robustness and chief) else None
    if rows is None:
      images, labels = data_lib.load_arrays(config.data, 'test')
      examples = robustness.Examples()  # For the figures.
      folder = evaluation_folder(config, 'robustness', identity)
      rows = robustness.evaluate_robustness(
          None, images, labels, config.attack,
          batch_size=config.data.eval_batch_size, examples=examples,
          transfer_logits_fn=transfer_source(config.attack.transfer_from,
                                             strategy),
          record=records.BatchRecords(os.path.join(folder, 'batches'),
                                      identity),
          **scale_out(config, strategy))
      if not chief:  # Its share is in the record; the chief reports.
        return None
      meta = evaluation_meta(config)
      for where in (folder, config.output_dir):  # History, and the latest.
        robustness.write_report(rows, where, meta=meta, examples=examples,
                                notes=table_notes(config.output_dir))
      robustness.write_summaries(
          rows, run_folder.RunFolder(config.output_dir).summary_dir,
          step=report.checkpoint_step(config.output_dir),
          key=records.key(identity))
  if not chief:
    return None
  print(f'\nResults of {config.output_dir} ({config.data.dataset}, '
        f'{config.model.name}):')
  common.print_table({'test': clean})
  if rows is not None:
    print(f'\nRobustness on {rows[0]["examples"]} test images (also in '
          f'{os.path.join(config.output_dir, "robustness.md")}, .csv, '
          f'.json):')
    robustness.print_table(rows, notes=table_notes(config.output_dir))
  if config.model.ibp and model is not None:
    pruned = ibp.pruned_fractions(model)
    run_folder.RunFolder(config.output_dir).write_json('ibp_pruned.json',
                                                       pruned)
    print('\nIBP: share of blocks pruned at test time (utility <= '
          f'{config.model.ibp_threshold}): ' + ', '.join(
              f'{k} {100 * v:.1f}%' for k, v in pruned.items()))
  print(f'Checkpoints: {run_folder.checkpoint_dir(config.output_dir)}\n'
        f'TensorBoard: tensorboard --logdir '
        f'{os.path.join(config.output_dir, "summaries")}')
  common.write_html_report(config, model)
  return rows


def run(config: config_lib.ExperimentConfig, folder: run_folder.RunFolder,
        strategy: Optional[tf.distribute.Strategy] = None):
  """Scores the latest checkpoint in `folder`: clean, then every attack.

  Returns:
    (clean metrics {'accuracy', 'loss', 'examples'}, robustness rows or
    None).
  """
  strategy = strategy or common.make_strategy(config)
  run_folder.warn_if_unfinished(config.output_dir)
  with common.chief_lock(folder, strategy):
    model = state.restore_model(config, strategy)
    clean = clean_metrics(config, strategy, model)
    rows = attack_and_report(config, strategy, model, clean,
                             attack=bool(config.attack.attacks))
  return clean, rows

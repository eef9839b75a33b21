"""--mode=audit: the gradient-masking checklist on a run's latest checkpoint."""

import dataclasses
from typing import Optional

import numpy as np

import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import audit
from tf_slwta.evaluation import records
from tf_slwta.evaluation import report
from tf_slwta.evaluation import robustness
from tf_slwta.modes import common
from tf_slwta.modes import evaluate
from tf_slwta.training import distribute
from tf_slwta.training import state


def distill_pool(config: config_lib.ExperimentConfig) -> Optional[np.ndarray]:
  """The run's training images (uint8 `[M, H, W, C]`, M at most
  --audit_distill_pool and --train_examples) whose answers the audit's
  distilled transfer source also learns, or None when it builds no
  distilled source (a --transfer_from run is given)."""
  wanted = config.audit.distill_pool
  if config.data.train_examples:
    wanted = min(wanted, config.data.train_examples)
  if (not wanted or not config.audit.distill_examples or
      config.attack.transfer_from):
    return None
  try:
    images, _ = data_lib.load_arrays(
        dataclasses.replace(config.data, train_examples=wanted), 'train')
  except data_lib.DataError:  # A smaller training split: all of it.
    images, _ = data_lib.load_arrays(
        dataclasses.replace(config.data, train_examples=0), 'train')
  return images[:wanted]


def run(config: config_lib.ExperimentConfig, folder: run_folder.RunFolder,
        strategy: Optional[tf.distribute.Strategy] = None) -> dict:
  """Audits the latest checkpoint in `folder` (see `evaluation.audit`).

  Writes audit.md and audit.json, and the audit's worst-case table as the
  run's robustness table (robustness.md, .csv, .json), prints both, logs the
  accuracies to TensorBoard and redraws report.html with every failed check
  at its top.

  Returns:
    The audit result (`audit.run_audit`).
  """
  strategy = strategy or common.make_strategy(config)
  run_folder.warn_if_unfinished(config.output_dir)
  with common.chief_lock(folder, strategy):
    model = state.restore_model(config, strategy)
    images, labels = data_lib.load_arrays(config.data, 'test')
    examples = robustness.Examples()
    identity = {**evaluate.evaluation_identity(config),
                'audit_settings': config.to_dict()['audit'], 'audit': True}
    meta = {**evaluate.evaluation_meta(config), **identity}
    where = evaluate.evaluation_folder(config, 'audit', identity)
    result = audit.run_audit(
        None, images, labels, config.attack, config.audit,
        batch_size=config.data.eval_batch_size,
        transfer_logits_fn=evaluate.transfer_source(
            config.attack.transfer_from, strategy),
        examples=examples, folder=where, distill_pool=distill_pool(config),
        **evaluate.scale_out(config, strategy))
    if not distribute.is_chief(strategy):
      return result
    result['notes'] = evaluate.table_notes(config.output_dir) + result['notes']
    for folder_ in (where, config.output_dir):  # History, and the latest.
      robustness.write_report(result['rows'], folder_, meta=meta,
                              examples=examples, notes=result['notes'])
      paths = audit.write(result, folder_, meta=meta)
    robustness.write_summaries(result['rows'], folder.summary_dir,
                               step=report.checkpoint_step(config.output_dir),
                               key=records.key(identity))
    print(f'\nAudit of {config.output_dir} (also in {paths["md"]}, '
          f'{paths["json"]}):\n')
    print(audit.markdown(result))
    worst = result['worst_case']
    print(f'Strongest number found: {100 * worst["accuracy"]:.2f}% '
          f'({worst["attack"]}, {worst["threat"]}, {worst["examples"]} '
          f'images)' + (', an upper bound only.' if result['upper_bound']
                        else '.'))
    if result['failed']:
      print(f'WARNING: {len(result["failed"])} audit check(s) failed: '
            f'{", ".join(result["failed"])}. See above; the table keeps the '
            f'worst case found.')
    common.write_html_report(config, model)
  return result

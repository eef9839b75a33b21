"""The robustness table: rows, consistency, and the files it writes."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch
from tf_slwta import config as config_lib
from tf_slwta.evaluation import robustness


@pytest.fixture(scope='module')
def uint8_batch():
  x, y = sample_batch(96)
  return np.round(x * 255).astype(np.uint8), y


def test_rows_are_consistent(uint8_batch):
  images, labels = uint8_batch
  cfg = config_lib.AttackConfig(fgsm_eps=0.02, pgd_eps=0.02, pgd_alpha=0.005,
                                pgd_steps=5, pgd_l2_eps=0.5, pgd_l2_alpha=0.1,
                                cw_c=1.0, cw_steps=30, cw_binary_search_steps=3,
                                cw_learning_rate=0.05)
  rows = robustness.evaluate_robustness(logits_fn(), images, labels, cfg,
                                        batch_size=40, verbose=False)
  by_name = {r['attack']: r for r in rows}
  assert list(by_name) == ['natural', 'fgsm', 'pgd_linf', 'pgd_l2', 'cw',
                           'combined']
  assert by_name['natural']['accuracy'] == pytest.approx(
      accuracy(logits_fn(), images / 255.0, labels))
  worst = min(by_name[n]['accuracy'] for n in cfg.attacks)
  assert by_name['combined']['accuracy'] <= worst
  assert by_name['pgd_linf']['accuracy'] <= by_name['natural']['accuracy']
  assert by_name['pgd_linf']['max_linf'] <= 0.02 + 1e-5
  assert by_name['pgd_l2']['median_l2'] <= 0.5 + 1e-5
  for row in rows[1:]:
    assert 0.0 <= row['success_rate'] <= 1.0
    assert row['examples'] == 96
  assert by_name['cw']['success_rate'] > 0.5 and by_name['cw']['median_l2'] > 0


def test_sequential_combination_and_subset(uint8_batch):
  images, labels = uint8_batch
  cfg = config_lib.AttackConfig(attacks=('fgsm', 'pgd_linf'),
                                combined='sequential', fgsm_eps=0.01,
                                pgd_eps=0.01, pgd_alpha=0.005, pgd_steps=2)
  rows = robustness.evaluate_robustness(logits_fn(), images, labels, cfg,
                                        batch_size=96, verbose=False)
  assert [r['attack'] for r in rows] == ['natural', 'fgsm', 'pgd_linf',
                                         'combined']
  # Chained, the perturbation can exceed one attack's budget.
  assert rows[-1]['max_linf'] > 0.01 + 1e-4
  assert 'sequential' in rows[-1]['settings']


def test_report_files(tmp_path, uint8_batch):
  images, labels = uint8_batch
  cfg = config_lib.AttackConfig(attacks=('fgsm',), fgsm_eps=0.02)
  rows = robustness.evaluate_robustness(logits_fn(), images, labels, cfg,
                                        verbose=False)
  paths = robustness.write_report(rows, str(tmp_path), meta={'model': 'x'})
  markdown = open(paths['md']).read().splitlines()
  assert markdown[0].startswith('| attack | settings | accuracy (%)')
  assert len(markdown) == 2 + len(rows)
  with open(paths['csv']) as f:
    parsed = list(csv.DictReader(f))
  assert [r['attack'] for r in parsed] == ['natural', 'fgsm', 'combined']
  assert float(parsed[1]['accuracy']) == pytest.approx(rows[1]['accuracy'])
  with open(paths['json']) as f:
    saved = json.load(f)
  assert saved['model'] == 'x' and saved['rows'] == json.loads(json.dumps(rows))


def test_combined_never_beats_an_attack_on_a_stochastic_model(uint8_batch):
  images, labels = uint8_batch
  base = logits_fn()
  noisy = lambda x: base(x) + tf.random.normal([tf.shape(x)[0], 10], stddev=2.0)
  cfg = config_lib.AttackConfig(attacks=('fgsm', 'pgd_linf'), fgsm_eps=0.02,
                                pgd_eps=0.02, pgd_alpha=0.005, pgd_steps=3,
                                eot_samples=2, mc_samples=3)
  rows = robustness.evaluate_robustness(noisy, images, labels, cfg,
                                        verbose=False)
  by_name = {r['attack']: r['accuracy'] for r in rows}
  assert by_name['combined'] <= min(by_name['fgsm'], by_name['pgd_linf'])
  # A fresh draw that fixes a wrong clean answer earns nothing.
  assert max(by_name['fgsm'], by_name['pgd_linf']) <= by_name['natural']

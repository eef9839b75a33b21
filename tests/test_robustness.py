"""The robustness table: rows, consistency, and the files it writes."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch
from tf_slwta import config as config_lib
from tf_slwta.evaluation import robustness
from tf_slwta.evaluation import scoring


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
  assert markdown[0].startswith(
      '| attack | threat model | settings | accuracy (%) | ± image s.e.')
  assert 'MC s.e.' not in markdown[0]  # A deterministic model: no MC column.
  assert [l.split(' | ')[1] for l in markdown[2:2 + len(rows)]] == [
      'none', 'Linf 0.02', 'Linf 0.02']
  # Under the table: how many images, and what the error bars are.
  assert markdown[2 + len(rows)] == '' and '96 test images' in markdown[-1]
  with open(paths['csv']) as f:
    parsed = list(csv.DictReader(f))
  assert [r['attack'] for r in parsed] == ['natural', 'fgsm', 'combined']
  assert float(parsed[1]['accuracy']) == pytest.approx(rows[1]['accuracy'])
  with open(paths['json']) as f:
    saved = json.load(f)
  assert saved['model'] == 'x' and saved['rows'] == json.loads(json.dumps(rows))


def _noisy(stddev=2.0):
  base = logits_fn()
  return lambda x: base(x) + tf.random.normal([tf.shape(x)[0], 10],
                                              stddev=stddev)


@pytest.mark.parametrize('seed', [0, 1])
def test_stochastic_rows_carry_their_monte_carlo_spread(uint8_batch, seed):
  images, labels = uint8_batch
  cfg = config_lib.AttackConfig(attacks=('fgsm', 'pgd_linf'), fgsm_eps=0.02,
                                pgd_eps=0.02, pgd_alpha=0.005, pgd_steps=3,
                                eot_samples=2, mc_samples=3,
                                decision_repeats=12, seed=seed)
  rows = robustness.evaluate_robustness(_noisy(), images, labels, cfg,
                                        verbose=False)
  by_name = {r['attack']: r for r in rows}
  for row in rows:
    assert row['repeats'] == 12 and row['mc_se'] > 0
    assert row['image_se'] == pytest.approx(np.sqrt(
        row['accuracy'] * (1 - row['accuracy']) / len(labels)))
  # The toy model has no layers that apply the other gradient modes: they
  # would repeat 'sample', so only 'sample' ran, and the table says so.
  assert by_name['fgsm']['gradient_modes'] == 'sample'
  assert by_name['fgsm']['inert_modes'].startswith('expected,straight_through')
  # The clean image is one of the attacker's candidates, so no attack row
  # beats the natural one, nor the combined row an attack, beyond noise.
  natural = by_name['natural']['accuracy']
  for name in ('fgsm', 'pgd_linf'):
    assert by_name[name]['accuracy'] <= natural + 3 * by_name[name]['mc_se']
  # Each row and the combined one are independent estimates, each with its
  # own Monte Carlo error: the combined row's pick was as bad for the model
  # as the strongest row's (measured with 200 decisions per candidate on
  # this toy with logit noise s.d. 1: 66.8% vs FGSM's 66.3% right, where
  # 4 repeats scored them 68.5% and 64.6%), but its number can sit above
  # that row's by their joint error (the note under the table says so).
  for name in ('fgsm', 'pgd_linf'):
    joint = np.hypot(by_name['combined']['mc_se'], by_name[name]['mc_se'])
    assert by_name['combined']['accuracy'] <= (
        by_name[name]['accuracy'] + 4 * max(joint, 0.005))
  assert by_name['pgd_linf']['accuracy'] < natural - 0.05


def test_combined_does_not_collect_the_luck_of_many_decisions(uint8_batch):
  # Attacks that cannot move an image (eps 0): the worst case over four of
  # them is the clean image. Judged by one fresh decision per attack and
  # broken if any said wrong, a noisy model would lose every image that
  # any of the four decisions got wrong; judged as the deployed model is
  # (one decision on the one image the attacker picks), it keeps its
  # natural accuracy.
  images, labels = uint8_batch
  cfg = config_lib.AttackConfig(attacks=('fgsm', 'pgd_linf', 'pgd_l2'),
                                fgsm_eps=0.0, pgd_eps=0.0, pgd_l2_eps=0.0,
                                mc_samples=1, decision_repeats=8)
  noisy = _noisy(stddev=4.0)
  rows = robustness.evaluate_robustness(noisy, images, labels, cfg,
                                        verbose=False, stochastic=True)
  by_name = {r['attack']: r for r in rows}
  natural = by_name['natural']['accuracy']
  assert 0.4 < natural < 0.9  # Noisy enough for luck to matter.
  # What "any of the decisions was wrong" would have scored:
  any_wrong = np.mean([
      np.all([scoring.decide_repeated(noisy, images / 255.0, labels, 1, 1
                                         )[0][0] for _ in range(4)], axis=0)
      for _ in range(4)])
  assert any_wrong < natural - 0.15
  combined = by_name['combined']
  assert abs(combined['accuracy'] - natural) <= 4 * combined['mc_se'] + 0.03

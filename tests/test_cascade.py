"""The cheaper evaluation: a cascade of attacks, and decisions that stop
drawing passes once they are settled."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import logits_fn, sample_batch
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.attacks import eot
from tf_slwta.evaluation import attack_suite
from tf_slwta.evaluation import audit
from tf_slwta.evaluation import robustness
from tf_slwta.layers import lwta


@pytest.fixture(scope='module')
def uint8_batch():
  x, y = sample_batch(96)
  return np.round(x * 255).astype(np.uint8), y


_SUITE = config_lib.AttackConfig(
    attacks=('apgd_ce', 'apgd_dlr', 'pgd_linf', 'square'), aa_eps=0.02,
    pgd_eps=0.02, pgd_alpha=0.005, pgd_steps=10, apgd_steps=15,
    square_queries=60, combined='worst_case')


def test_the_cascade_finds_the_full_tables_worst_case(uint8_batch):
  # Every attack's random draws depend on the seed and the image's own id,
  # so an attack run on the images still standing treats each of them as
  # it would in the whole batch: for a deterministic model the worst case
  # is the same image by image.
  images, labels = uint8_batch
  full, cascaded = {}, {}
  rows = robustness.evaluate_robustness(
      logits_fn(), images, labels, _SUITE, batch_size=48, verbose=False,
      outcomes=full)
  cheap = robustness.evaluate_robustness(
      logits_fn(), images, labels, dataclasses.replace(_SUITE, cascade=True),
      batch_size=48, verbose=False, outcomes=cascaded)
  np.testing.assert_array_equal(full['combined'], cascaded['combined'])
  assert [r['attack'] for r in cheap] == ['natural', 'combined']
  by_name = {r['attack']: r for r in rows}
  assert cheap[1]['accuracy'] == by_name['combined']['accuracy'] < 0.5
  # Later attacks ran on fewer images, and the note says so.
  ran = {c['attack'].split('/')[0]: c['attacked']
         for c in cheap[0]['cascade']}
  assert ran['apgd_ce'] > ran['square']
  assert any('cascade' in n for n in robustness.table_notes(cheap))


def test_an_attack_on_part_of_a_batch_treats_each_image_alike():
  x, y = sample_batch(16)
  ids = tf.range(16, dtype=tf.int64)
  part = [3, 7, 11]
  for attack in (
      lambda x, y, i: attacks.apgd(logits_fn(), x, y, 0.03, steps=5, ids=i),
      lambda x, y, i: attacks.pgd(logits_fn(), x, y, 0.03, 0.01, 3, ids=i),
      lambda x, y, i: attacks.square(logits_fn(), x, y, 0.03, queries=20,
                                     ids=i),
      lambda x, y, i: attacks.random_noise(logits_fn(), x, y, 0.03, draws=3,
                                           ids=i)):
    whole = attack(x, y, ids).numpy()[part]
    alone = attack(x[part], y[part], tf.gather(ids, part)).numpy()
    np.testing.assert_allclose(whole, alone, atol=1e-6)


def test_the_cascades_lead_mode_runs_its_own_steps():
  # --cascade_lead_steps: the APGD attacks of the cascade's lead mode (the
  # mode of its first attack, the one that meets every image) run longer;
  # other attacks keep their settings, and without a cascade the setting
  # changes nothing.
  x, y = sample_batch(16)
  fn = logits_fn()
  cfg = dataclasses.replace(_SUITE, cascade=True, cascade_lead_steps=40)
  modes = attack_suite.gradient_modes(fn, cfg, False, x[:4])
  variants = attack_suite.attack_variants(fn, cfg, modes)
  lead = attack_suite.cascade_order(variants)[0]
  assert lead.name == 'apgd_ce' and '40 steps' in lead.settings
  others = [v for v in variants if v is not lead]
  assert [v.name for v in others] == ['apgd_dlr', 'pgd_linf', 'square']
  seed = tf.constant(cfg.seed, tf.int64)
  for variant, loss in ((lead, 'ce'), (others[0], 'dlr')):
    np.testing.assert_allclose(
        variant.run(x, y, seed).numpy(),
        attacks.apgd(fn, x, y, 0.02, steps=40, loss=loss, seed=seed).numpy(),
        atol=1e-6)
    assert not np.allclose(
        variant.run(x, y, seed).numpy(),
        attacks.apgd(fn, x, y, 0.02, steps=15, loss=loss,
                     seed=seed).numpy(), atol=1e-6)
  np.testing.assert_allclose(  # PGD is not APGD: its own steps.
      others[1].run(x, y, seed).numpy(),
      attacks.pgd(fn, x, y, 0.02, 0.005, 10, seed=seed).numpy(), atol=1e-6)
  plain = attack_suite.attack_variants(
      fn, dataclasses.replace(cfg, cascade=False), modes)
  assert [v.settings for v in plain] == ['', '', '', plain[3].settings]
  with pytest.raises(ValueError, match='cascade_lead_steps'):
    dataclasses.replace(cfg, cascade_lead_steps=-1)
  # The table's note says what the lead mode ran.
  rows = robustness.evaluate_robustness(
      fn, np.round(x * 255).astype(np.uint8), y,
      dataclasses.replace(cfg, attacks=('apgd_ce', 'apgd_dlr')),
      batch_size=16, verbose=False)
  note = next(n for n in robustness.table_notes(rows) if 'cascade' in n)
  assert ('apgd_ce/sample ran 40 steps' in note and
          'apgd_dlr/sample ran 40 steps' in note and
          '--cascade_lead_steps' in note), note


def _small_lwta():
  """A small stochastic LWTA model's logits function (fixed seeds)."""
  keras.utils.set_random_seed(3)
  model = keras.Sequential([
      keras.layers.Input((28, 28, 1)), keras.layers.Flatten(),
      keras.layers.Dense(16), lwta.LWTA(competitors=2, seed=4),
      keras.layers.Dense(10)])
  return lambda images: model(images, training=False)


def test_the_lead_steps_stay_in_the_lead_mode():
  # A stochastic model attacked in several modes: only the APGD attacks of
  # the first (cheapest) mode take the lead's steps.
  fn = _small_lwta()
  x, _ = sample_batch(8)
  cfg = dataclasses.replace(
      _SUITE, attacks=('apgd_ce', 'apgd_dlr'), cascade=True,
      cascade_lead_steps=40, gradient_modes=('expected', 'sample'),
      eot_samples=2, mc_samples=2)
  modes = attack_suite.gradient_modes(fn, cfg, True, x[:4])
  order = attack_suite.cascade_order(
      attack_suite.attack_variants(fn, cfg, modes))
  steps = {f'{v.name}/{v.mode}': v.settings.split(' steps')[0]
           for v in order}
  lead_mode = order[0].mode
  assert lead_mode in ('expected', 'sample'), order[0]
  assert sorted(steps.values()) == ['', '', '40', '40'], steps
  assert all((steps[key] == '40') == key.endswith('/' + lead_mode)
             for key in steps), steps


def test_the_focus_stage_runs_aa_rand_in_the_randomized_modes_only(
    monkeypatch):
  # --cascade_focus: APGD-CE with AutoAttack-rand's EOT and steps, after
  # the iterative attacks, in each gradient mode with randomness.
  fn = _small_lwta()
  x, y = sample_batch(8)
  cfg = dataclasses.replace(
      _SUITE, attacks=('apgd_ce', 'square'), cascade=True,
      cascade_focus=0.25, cascade_focus_eot=3, cascade_focus_steps=7,
      gradient_modes=('expected', 'sample'), eot_samples=2, mc_samples=2)
  modes = attack_suite.gradient_modes(fn, cfg, True, x[:4])
  order = attack_suite.cascade_order(
      attack_suite.attack_variants(fn, cfg, modes, stochastic=True))
  labels = [v.label for v in order]
  assert labels[:3] == ['apgd_ce/expected', 'apgd_ce/sample',
                        'apgd_ce_focus/sample'], labels
  assert labels[3].startswith('square'), labels
  focus = order[2]
  assert focus.focus == 0.25 and '7 steps, EOT 3' in focus.settings
  calls = []  # What the variant asks of APGD (its randomness is the model's).

  def apgd(logits, images, labels, eps, **kwargs):
    calls.append((logits, eps, kwargs))
    return tf.identity(images)

  monkeypatch.setattr(attacks, 'apgd', apgd)
  focus.run(x, y, tf.constant(5, tf.int64))
  (logits, eps, kwargs), = calls
  assert logits is fn and eps == cfg.aa_eps
  assert kwargs['gradient_fn'] is modes.functions['sample']
  assert {k: kwargs[k] for k in ('loss', 'steps', 'eot_samples',
                                 'mc_samples', 'restarts')} == dict(
                                     loss='ce', steps=7, eot_samples=3,
                                     mc_samples=2, restarts=1)
  monkeypatch.undo()
  # None for a deterministic model, or without a cascade.
  for stochastic, cascade in ((False, True), (True, False)):
    assert not [v for v in attack_suite.attack_variants(
        fn, dataclasses.replace(cfg, cascade=cascade), modes,
        stochastic=stochastic) if v.name.endswith('_focus')]
  for share in (-0.1, 1.5):
    with pytest.raises(ValueError, match='cascade_focus'):
      dataclasses.replace(cfg, cascade_focus=share)


def test_some_attacks_skip_the_randomized_modes():
  # --randomized_mode_attacks: the attacks not listed run only where a
  # gradient takes one pass, or in the first mode if none does.
  fn = _small_lwta()
  x, _ = sample_batch(8)
  cfg = dataclasses.replace(
      _SUITE, attacks=('apgd_ce', 'apgd_dlr'), cascade=True,
      gradient_modes=('expected', 'sample'),
      randomized_mode_attacks=('apgd_ce',))
  modes = attack_suite.gradient_modes(fn, cfg, True, x[:4])
  assert modes.deterministic == ('expected',)
  labels = lambda c, m: [v.label for v in attack_suite.cascade_order(
      attack_suite.attack_variants(fn, c, m, stochastic=True))]
  assert labels(cfg, modes) == ['apgd_ce/expected', 'apgd_dlr/expected',
                                'apgd_ce/sample']
  every = dataclasses.replace(cfg, randomized_mode_attacks=())
  assert labels(every, modes) == [
      'apgd_ce/expected', 'apgd_dlr/expected', 'apgd_ce/sample',
      'apgd_dlr/sample']
  sampled = dataclasses.replace(cfg, gradient_modes=('sample',))
  assert labels(sampled, attack_suite.gradient_modes(
      fn, sampled, True, x[:4])) == ['apgd_ce/sample', 'apgd_dlr/sample']
  with pytest.raises(ValueError, match='randomized_mode_attacks'):
    dataclasses.replace(cfg, randomized_mode_attacks=('square',))


def test_the_focus_stage_meets_the_images_nearest_the_boundary():
  # The focused attack runs on the share of the images still standing
  # whose worst point so far has the lowest margin, and on no other.
  x, y = sample_batch(48)
  fn = logits_fn()
  shift = 0.2 * np.sign(np.random.default_rng(0).normal(
      size=x.shape)).astype(np.float32)
  met = []

  def first(images, labels, seed, ids):
    return tf.clip_by_value(images + tf.gather(shift, ids), 0.0, 1.0)

  def focused(images, labels, seed, ids):
    met.append(np.sort(ids.numpy()))
    return tf.identity(images)

  extra = lambda fn_, modes: [
      attack_suite.Variant('apgd_ce', 'sample', first),
      attack_suite.Variant('apgd_ce_focus', 'sample', focused, focus=0.3)]
  cfg = dataclasses.replace(_SUITE, attacks=(), cascade=True)
  rows = robustness.evaluate_robustness(
      fn, np.round(x * 255).astype(np.uint8), y, cfg, batch_size=48,
      verbose=False, extra_attacks=extra, stochastic=False)
  # The same choice made by hand: the worse of the clean and the shifted
  # image per example (by the decision), among those both leave right.
  clean = np.round(x * 255).astype(np.float32) / 255.0
  shifted = first(tf.constant(clean), y, 0, tf.range(48)).numpy()
  probs = [tf.nn.softmax(fn(tf.constant(c))).numpy() for c in (clean,
                                                                shifted)]
  right = np.stack([p.argmax(-1) == y for p in probs])
  margin = np.stack([np.log(p[np.arange(48), y]) - np.log(np.where(
      np.eye(10, dtype=bool)[y], 0, p).max(-1)) for p in probs])
  standing = np.flatnonzero(right.all(axis=0))
  closest = margin.min(axis=0)[standing]
  want = np.sort(standing[np.argsort(closest)[:int(np.ceil(
      0.3 * len(standing)))]])
  assert 4 <= len(standing) < 48 and len(met) == 1, (standing, met)
  np.testing.assert_array_equal(met[0], want)
  note = next(n for n in robustness.table_notes(rows) if 'cascade' in n)
  assert f'apgd_ce_focus/sample {len(want)} -> 0' in note, note


class _Replay:
  """A noisy 3-class toy whose passes are drawn in advance per image: pass
  k of image i is always the same, however the passes are batched."""

  def __init__(self, images=3000, cap=20, seed=0):
    rng = np.random.default_rng(seed)
    # Class scores as spread as the noise: many decisions are close calls.
    base = rng.normal(size=(images, 3)) * 0.6
    self.logits = (base[:, None, :] + rng.normal(size=(images, cap, 3))
                   ).astype(np.float32)
    self.counter = np.zeros(images, np.int64)

  def __call__(self, x):
    # Python state: run eagerly even inside the compiled decision passes.
    out = tf.py_function(self._replay, [x], tf.float32)
    out.set_shape([x.shape[0], 3])
    return out

  def _replay(self, x):
    ids = np.asarray(x[:, 0, 0, 0]).astype(np.int64)
    out = self.logits[ids, self.counter[ids]]
    self.counter[ids] += 1
    return tf.constant(out)


def test_a_settled_decision_agrees_with_the_full_one_as_stated():
  toy = _Replay()
  x = tf.reshape(tf.range(3000, dtype=tf.float32), [3000, 1, 1, 1])
  probs, used = eot.settled_probabilities(toy, x, cap=20, block=2, z=3.5)
  soft = np.exp(toy.logits) / np.exp(toy.logits).sum(-1, keepdims=True)
  full = soft.mean(axis=1).argmax(-1)  # All 20 passes of every image.
  differ = np.mean(probs.numpy().argmax(-1) != full)
  # Measured 0.6% on this kind of toy (eot.settled_probabilities); the
  # bound leaves room for the sample of 3,000 images.
  assert differ <= 0.012, differ
  assert 4 <= used.numpy().min() and used.numpy().max() == 20
  assert used.numpy().mean() < 18  # Some decisions stopped early.
  # A decision that is never close stops after two blocks.
  sure = _Replay(images=50, seed=1)
  sure.logits[:, :, 0] += 20.0
  x = tf.reshape(tf.range(50, dtype=tf.float32), [50, 1, 1, 1])
  _, used = eot.settled_probabilities(sure, x, cap=20, block=2, z=3.5)
  assert used.numpy().max() == 4


def test_an_audit_with_a_cascade_checks_by_its_stages(uint8_batch):
  images, labels = uint8_batch
  attack = dataclasses.replace(_SUITE, attacks=('apgd_ce', 'square'),
                               cascade=True)
  checks = config_lib.AuditConfig(sweep_examples=32, sweep_steps=(5, 15),
                                  eps_multiples=(1, 16), noise_draws=3)
  result = audit.run_audit(logits_fn(), images, labels, attack, checks,
                           batch_size=48, verbose=False)
  # The worst case after each stage of the cascade (the distilled network
  # is the transfer source), then after all of them.
  names = [r['attack'] for r in result['rows']]
  assert names == ['natural', 'after_iterative', 'after_single_step',
                   'after_transfer', 'after_square', 'combined'], names
  accuracies = [r['accuracy'] for r in result['rows']]
  assert accuracies == sorted(accuracies, reverse=True)  # Deterministic.
  assert accuracies[-1] < 0.5
  by_name = {c['name']: c for c in result['checks']}
  for name, stage in (('single_step', 'iterative'),
                      ('gradient_free', 'transfer'),
                      ('noise_floor', 'square')):
    assert by_name[name]['status'] == 'passed', by_name[name]
    before = result['rows'][names.index(f'after_{stage}')]['accuracy']
    assert f'from {100 * before:.1f}%' in by_name[name]['detail']
  # Which mode is strongest: APGD-CE alone on the first 32 images.
  assert [r['attack'] for r in result['compared_rows']] == [
      'natural', 'apgd_ce', 'combined']
  assert result['compared_rows'][0]['examples'] == 32
  assert {'table', 'modes_table', 'eps_sweep', 'steps_sweep'} <= set(
      result['seconds'])
  # The steps sweep's point at the table's own 15 steps is read from that
  # table, not attacked again.
  table = {r['attack']: r for r in result['compared_rows']}
  assert result['steps_sweep'][-1]['accuracy'] == table['apgd_ce']['accuracy']
  assert result['failed'] == [], result['checks']

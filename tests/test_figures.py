"""Figures and report.html: written, the right size, not blank, all linked."""

import dataclasses
import glob
import html.parser
import json
import os

import keras
import matplotlib.image
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

from attack_fixtures import logits_fn, sample_batch
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta import run_folder
from tf_slwta.evaluation import certify
from tf_slwta.evaluation import figures
from tf_slwta.evaluation import report
from tf_slwta.evaluation import robustness
from tf_slwta.modes import audit as audit_mode
from tf_slwta.modes import certify as certify_mode
from tf_slwta.modes import train as train_mode

ATTACKS = config_lib.AttackConfig(fgsm_eps=0.05, pgd_eps=0.05, pgd_alpha=0.01,
                                  pgd_steps=3, pgd_l2_eps=1.0, pgd_l2_alpha=0.3,
                                  cw_c=1.0, cw_steps=10,
                                  cw_binary_search_steps=1,
                                  cw_learning_rate=0.05)
CLASS_NAMES = data_lib.dataset_info('synthetic').class_names


def assert_figure(path, kind):
  """The PNG exists, has the size of its kind, and is not blank."""
  assert os.path.exists(path), path
  pixels = matplotlib.image.imread(path)
  assert pixels.shape[:2] == figures.SIZES[kind][::-1], path
  assert pixels[..., :3].var() > 1e-4, f'{path} is blank'


@pytest.fixture(scope='module')
def evaluated():
  """(rows, Examples) of the shared tiny model on 48 synthetic images."""
  x, y = sample_batch(48)
  images = np.round(x * 255).astype(np.uint8)
  examples = robustness.Examples(keep=10)
  rows = robustness.evaluate_robustness(logits_fn(), images, y, ATTACKS,
                                        batch_size=32, verbose=False,
                                        examples=examples)
  return rows, examples, images, y


def test_examples_leave_the_table_alone_and_agree_with_it(evaluated):
  rows, examples, images, labels = evaluated
  untimed = lambda table: [{k: v for k, v in r.items() if k != 'seconds'}
                           for r in table]
  assert untimed(robustness.evaluate_robustness(
      logits_fn(), images, labels, ATTACKS, batch_size=32,
      verbose=False)) == untimed(rows)
  names = [r['attack'] for r in rows]
  assert examples.names == names
  assert examples.images.shape == (10, 28, 28, 1)
  assert np.array_equal(examples.labels, labels[:10])
  for name in names:
    assert examples.true_class[name].shape == (48,)
    assert examples.probabilities[name].shape == (10, 10)
    assert examples.robust[name].shape == (10,)
    if name != 'natural':
      assert examples.adversarial[name].shape == (10, 28, 28, 1)
  # The recorded probabilities are the decision the table counted.
  natural = examples.probabilities['natural'].argmax(-1) == labels[:10]
  assert np.array_equal(examples.robust['natural'], natural)
  for name in ATTACKS.attacks:
    right = examples.probabilities[name].argmax(-1) == labels[:10]
    assert np.array_equal(examples.robust[name], natural & right)


def test_examples_round_trip_through_npz(evaluated, tmp_path):
  _, examples, _, _ = evaluated
  examples.save(str(tmp_path))
  loaded = robustness.Examples.load(str(tmp_path))
  assert loaded.names == examples.names
  for group in ('adversarial', 'probabilities', 'robust', 'true_class'):
    for name, value in getattr(examples, group).items():
      np.testing.assert_array_equal(getattr(loaded, group)[name], value)
  assert robustness.Examples.load(str(tmp_path / 'none')) is None
  # Keeping no images still records every true-class probability.
  x, y = sample_batch(8)
  histograms_only = robustness.Examples(keep=0)
  robustness.evaluate_robustness(
      logits_fn(), np.round(x * 255).astype(np.uint8), y,
      config_lib.AttackConfig(attacks=('fgsm',)), verbose=False,
      examples=histograms_only)
  histograms_only.save(str(tmp_path / 'none'))
  loaded = robustness.Examples.load(str(tmp_path / 'none'))
  assert loaded.labels is None and loaded.true_class['fgsm'].shape == (8,)
  assert [os.path.basename(p) for p in figures.robustness_figures(
      str(tmp_path), loaded, {}, CLASS_NAMES)] == ['true_class_histograms.png']


def test_every_robustness_figure_is_drawn(evaluated, tmp_path):
  rows, examples, _, _ = evaluated
  settings = {r['attack']: r['settings'] for r in rows}
  paths = figures.robustness_figures(str(tmp_path), examples, settings,
                                     CLASS_NAMES)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted([f'attack_{n}.png' for n in (*ATTACKS.attacks,
                                                      'combined')] +
                         ['true_class_histograms.png',
                          'correct_and_fooled.png'])
  for path in paths:
    stem = os.path.basename(path)
    kind = 'attack_grid' if stem.startswith('attack_') else stem[:-4]
    assert_figure(path, kind)


def test_amplified_perturbation_fills_the_range():
  delta = np.zeros([4, 4, 1], np.float32)
  delta[0, 0], delta[1, 1] = 0.1, -0.05
  picture, factor = figures.amplified(delta)
  assert factor == pytest.approx(5.0)
  assert picture.max() == pytest.approx(1.0) and picture.min() >= 0.0
  assert figures.amplified(delta * 1e-4)[1] == 0.0  # Invisible: not blown up.


def lwta_ibp_model():
  return models.build_model(
      config_lib.ModelConfig(seed_cnn_filters=(8, 16), seed_cnn_units=32,
                             activation='lwta', lwta_competitors=2, ibp=True),
      data_lib.dataset_info('synthetic'))


def test_lwta_winner_shares_and_ibp_utilities(tmp_path):
  keras.utils.set_random_seed(0)
  model = lwta_ibp_model()
  images = sample_batch(16)[0]
  shares = figures.winner_shares(model, images)
  assert list(shares) == ['conv1_act', 'conv2_act', 'dense_act']
  for share in shares.values():
    assert share.shape == (2,) and share.sum() == pytest.approx(1.0)
  paths = figures.model_figures(str(tmp_path), model, images)
  assert [os.path.basename(p) for p in paths] == ['lwta_winner_shares.png',
                                                  'ibp_utilities.png']
  assert_figure(paths[0], 'lwta_winner_shares')
  assert_figure(paths[1], 'ibp_utilities')
  relu = models.build_model(config_lib.ModelConfig(seed_cnn_filters=(8, 16),
                                                   seed_cnn_units=32),
                            data_lib.dataset_info('synthetic'))
  assert figures.model_figures(str(tmp_path / 'relu'), relu, images) == []


def test_certified_curve_agrees_with_the_table():
  rows = [{'label': 1, 'certify': 1, 'radius': r} for r in (0.1, 0.3, 0.3, 0.6)]
  rows += [{'label': 1, 'certify': 2, 'radius': 0.9},  # Certified, wrong.
           {'label': 1, 'certify': certify.ABSTAIN, 'radius': 0.0}]
  table = {0.0: 4 / 6, 0.3: 3 / 6, 0.5: 1 / 6, 1.0: 0.0}
  radii, accuracy = figures.certified_curve({'per_example': rows})
  for radius, expected in table.items():
    # In force at r: the step after the last radius under r.
    index = np.searchsorted(radii[1:], radius, side='left')
    assert accuracy[index] == pytest.approx(expected), radius


def test_certified_accuracy_figure(tmp_path):
  x, y = sample_batch(6)
  cfg = config_lib.CertifyConfig(sigma=0.25, n0=10, n=60, batch_size=60,
                                 radii=(0.0, 0.25, 0.5))
  result = certify.certify_dataset(logits_fn(), np.round(x * 255).astype(
      np.uint8), y, cfg, 10, verbose=False)
  assert_figure(figures.certified_accuracy(str(tmp_path / 'c.png'), result),
                'certified_accuracy')


def test_learning_curves_with_and_without_kl(tmp_path):
  records = [{'epoch': e, 'train/loss': 2.0 / e, 'test/loss': 2.1 / e,
              'train/accuracy': 0.3 * e, 'test/accuracy': 0.25 * e,
              'train/kl': 100.0 / e, 'train/kl_term': 0.01 / e}
             for e in (1, 2, 3)]
  assert_figure(figures.learning_curves(str(tmp_path / 'kl.png'), records),
                'learning_curves')
  for r in records:
    r['train/kl'] = r['train/kl_term'] = 0.0
  assert_figure(figures.learning_curves(str(tmp_path / 'no_kl.png'), records),
                'learning_curves')


class _CheckedHTML(html.parser.HTMLParser):
  """Collects <img> sources and alt texts; fails on unbalanced tags."""
  VOID = {'img', 'meta', 'br', 'hr', 'link', 'input'}

  def __init__(self):
    super().__init__()
    self.stack, self.images, self.links = [], [], []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == 'img':
      assert attrs.get('alt'), attrs
      self.images.append(attrs['src'])
    if tag == 'a':
      self.links.append(attrs['href'])
    if tag not in self.VOID:
      self.stack.append(tag)

  def handle_endtag(self, tag):
    assert self.stack and self.stack[-1] == tag, (self.stack, tag)
    self.stack.pop()


def parse_html(path):
  parser = _CheckedHTML()
  with open(path) as f:
    text = f.read()
  assert text.startswith('<!DOCTYPE html>')
  parser.feed(text)
  parser.close()
  assert not parser.stack, parser.stack
  return parser


def summary_tags(summary_dir, plugin='images'):
  """Tags of one plugin's summaries under `summary_dir`, read as TensorBoard
  does ('images' or 'scalars')."""
  tags = set()
  for path in glob.glob(os.path.join(summary_dir, 'events.*')):
    events = event_accumulator.EventAccumulator(path)
    events.Reload()
    tags |= {tag for tag in events.Tags()['tensors'] if events.SummaryMetadata(
        tag).plugin_data.plugin_name == plugin}
  return tags


@pytest.mark.slow
def test_train_evaluate_certify_and_grid_write_one_report(tmp_path, capsys):
  """The CLI path: a tiny LWTA + IBP run trained, attacked and certified."""
  config = config_lib.ExperimentConfig(
      mode='train', output_dir=str(tmp_path / 'run'), evaluate_robustness=True,
      data=config_lib.DataConfig(dataset='synthetic', train_examples=256,
                                 eval_examples=40, batch_size=64,
                                 eval_batch_size=40),
      model=config_lib.ModelConfig(seed_cnn_filters=(8, 16), seed_cnn_units=32,
                                   activation='lwta', ibp=True),
      train=config_lib.TrainConfig(epochs=2, learning_rate=0.05,
                                   strategy='one_device'),
      # Two gradient modes of five: the page is the same, a minute sooner.
      attack=dataclasses.replace(ATTACKS, mc_samples=2,
                                 gradient_modes=('expected', 'sample')),
      certify=config_lib.CertifyConfig(n0=5, n=20, batch_size=20,
                                       radii=(0.0, 0.25)))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_mode.run(config, run_folder.RunFolder(config.output_dir), strategy)
  assert 'report.html' in capsys.readouterr().out
  run = config.output_dir
  expected = {f'attack_{n}.png' for n in (*ATTACKS.attacks, 'combined')} | {
      'true_class_histograms.png', 'correct_and_fooled.png',
      'learning_curves.png', 'lwta_winner_shares.png', 'ibp_utilities.png'}
  assert set(os.listdir(os.path.join(run, 'figures'))) == expected
  page = parse_html(os.path.join(run, 'report.html'))
  assert sorted(page.images) == sorted(f'figures/{n}' for n in expected)
  text = open(os.path.join(run, 'report.html')).read()
  assert 'pgd_linf' in text and 'Linf 0.05' in text  # The table.
  assert {f'figures/{n[:-4]}' for n in expected} <= summary_tags(
      os.path.join(run, 'summaries'))

  # Certification adds its figure to the same page, keeping the others.
  certify_config = dataclasses.replace(
      config, mode='certify', data=dataclasses.replace(config.data,
                                                       eval_examples=4))
  certify_mode.run(certify_config, run_folder.RunFolder(config.output_dir),
                   strategy)
  page = parse_html(os.path.join(run, 'report.html'))
  assert sorted(page.images) == sorted(
      f'figures/{n}' for n in expected | {'certified_accuracy.png'})
  assert_figure(os.path.join(run, 'figures', 'certified_accuracy.png'),
                'certified_accuracy')
  # The settings shown are those the robustness table was made with.
  text = open(os.path.join(run, 'report.html')).read()
  assert '<tr><td>test images</td><td>40</td></tr>' in text
  assert 'not on the latest checkpoint' not in text

  # The audit writes its checklist and table, logs the accuracies to
  # TensorBoard and adds its section to the same page.
  audit_config = dataclasses.replace(
      config, mode='audit', attack=dataclasses.replace(
          ATTACKS, attacks=('apgd_ce', 'square'), aa_eps=0.05, apgd_steps=4,
          square_queries=10, mc_samples=2, decision_repeats=2,
          gradient_modes=('expected', 'sample')),
      audit=config_lib.AuditConfig(sweep_examples=8, eps_multiples=(1, 8),
                                   sweep_steps=(2, 4), noise_draws=2))
  audit_mode.run(audit_config, run_folder.RunFolder(run), strategy)
  for name in ('audit.md', 'audit.json', 'audit_outcomes.npz'):
    assert os.path.exists(os.path.join(run, name))
  saved = json.load(open(os.path.join(run, 'audit.json')))
  assert saved['stochastic'] and saved['checks']
  assert [r['attack'] for r in robustness.load_report(run, {})][:4] == [
      'natural', 'apgd_ce', 'square', 'single_step']
  text = open(os.path.join(run, 'report.html')).read()
  assert 'Gradient-masking audit' in text
  # Tagged with the threat model and the image count.
  assert 'robustness/linf_0.05/combined/40_images' in summary_tags(
      os.path.join(run, 'summaries'), 'scalars')

  # A grid page links each row's report.
  rows = [r for r in robustness.load_report(run, {}) if '/' not in r['attack']]
  paths = robustness.write_grid([{'row': 'tiny', 'flagfile': 'tiny.cfg',
                                  'output_dir': run, 'clean_accuracy': 0.5,
                                  'attacks': rows}], str(tmp_path))
  grid = parse_html(report.write_grid_report(paths['json']))
  assert grid.links == ['run/report.html']


def test_colour_images_fewer_than_the_grid_columns(tmp_path):
  """CIFAR-shaped images, and fewer kept than the grid has columns."""
  rng = np.random.RandomState(0)
  images = rng.rand(3, 32, 32, 3).astype(np.float32)
  adversarial = np.clip(images + 0.03 * rng.randn(*images.shape), 0, 1)
  probabilities = rng.dirichlet(np.ones(10), size=3).astype(np.float32)
  names = data_lib.dataset_info('cifar10').class_names
  path = figures.attack_grid(str(tmp_path / 'a.png'), 'fgsm', 'eps 0.03',
                             images, adversarial, np.array([0, 1, 2]),
                             probabilities, probabilities, names)
  assert_figure(path, 'attack_grid')

"""Attack speed and strength: tf_slwta against the Adversarial Robustness Toolbox.

Both libraries attack the same model on the same test images in one process,
one after the other, with the same settings. Reported per attack: seconds per
1,000 images (after one warm-up call each, so tracing is not counted) and
attack success, the share of correctly classified images the attack turns
wrong (judged by the same argmax for both); attacks with random starts are
averaged over --seeds runs on each side.

    python benchmarks/attacks.py                     # Fashion-MNIST, writes BENCHMARKS.md
    python benchmarks/attacks.py --examples=200 --write=false

The model is the seed CNN restored from --output_dir (the quickstart's run
by default), or, if that has no checkpoint, trained for one epoch here.
"""

import json
import logging
import os
import sys
import time
import warnings

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.training import loop
from tf_slwta.training import state

with warnings.catch_warnings():
  warnings.simplefilter('ignore')  # ART warns that PyTorch is absent.
  from art.attacks import evasion  # pylint: disable=g-import-not-at-top
  from art.estimators.classification import TensorFlowV2Classifier  # pylint: disable=g-import-not-at-top

_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/quickstart',
                                  'Run whose latest checkpoint is attacked.')
_EXAMPLES = flags.DEFINE_integer('examples', 1000, 'Test images per attack.')
_CW_EXAMPLES = flags.DEFINE_integer('cw_examples', 100,
                                    'Test images for Carlini-Wagner (slow).')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Runs (random starts) averaged for '
                              'the attacks that draw random numbers.')
_ONLY = flags.DEFINE_list('only', [], 'Run only attacks whose name starts '
                          'with one of these (e.g. APGD,Square).')
_BATCH = flags.DEFINE_integer('batch_size', 250, 'Images per attack call.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')
START, END = '<!-- attacks:start -->', '<!-- attacks:end -->'


def _model():
  """The run's model restored from its checkpoint, or one trained here."""
  path = os.path.join(_OUTPUT_DIR.value, run_folder.CONFIG_FILE)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  if tf.train.latest_checkpoint(run_folder.checkpoint_dir(_OUTPUT_DIR.value)):
    with open(path) as f:
      config = config_lib.ExperimentConfig.from_dict(json.load(f))
    return (state.restore_model(config, strategy),
            f'{config.model.name} restored from {config.output_dir}')
  print(f'No checkpoint in {_OUTPUT_DIR.value}: training one epoch first.')
  config = config_lib.ExperimentConfig(
      output_dir=_OUTPUT_DIR.value,
      train=config_lib.TrainConfig(epochs=1, learning_rate=0.05,
                                   strategy='one_device'))
  loop.train(config, strategy)
  return state.restore_model(config, strategy), 'seed_cnn trained for 1 epoch'


def _run_batched(attack, x, y, batch):
  outputs = [attack(x[i:i + batch], y[i:i + batch])
             for i in range(0, len(x), batch)]
  return np.concatenate([np.asarray(o) for o in outputs])


def _measure(attack, x, y, batch, predict, seeds, warm_up=None):
  """(seconds per 1,000 images, success) averaged over `seeds` runs.

  attack(images, labels, seed); the seed sets the random starts.
  """
  # Warm-up on the timed batch shape, so tracing is not counted.
  warm_up = warm_up or batch
  attack(x[:warm_up], y[:warm_up], 0)
  clean = predict(x) == y
  times, successes = [], []
  for seed in range(seeds):
    start = time.perf_counter()
    adv = _run_batched(lambda a, b: attack(a, b, seed), x, y, batch)
    times.append(time.perf_counter() - start)
    fooled = (predict(adv) != y) & clean
    successes.append(fooled.sum() / max(clean.sum(), 1))
  return 1000 * np.mean(times) / len(x), np.mean(successes)


def main(argv):
  del argv
  logging.getLogger('art').setLevel(logging.WARNING)  # Per-batch INFO lines.
  model, model_name = _model()
  images, labels = data_lib.load_arrays(config_lib.DataConfig(), 'test')
  x = images[:_EXAMPLES.value].astype(np.float32) / 255.0
  y = labels[:_EXAMPLES.value]
  logits_fn = lambda z: model(z, training=False)
  predict = lambda z: np.concatenate([
      attacks.predict(logits_fn, tf.constant(z[i:i + 500])).numpy()
      for i in range(0, len(z), 500)])
  classifier = TensorFlowV2Classifier(
      model=model, nb_classes=10, input_shape=x.shape[1:],
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      clip_values=(0.0, 1.0))
  batch = _BATCH.value
  ours = {
      'FGSM Linf eps=0.1': lambda a, b, s: attacks.fgsm(logits_fn, a, b, 0.1),
      'PGD Linf eps=0.1, alpha=0.01, 20 steps': lambda a, b, s: attacks.pgd(
          logits_fn, a, b, 0.1, 0.01, 20, seed=s),
      'PGD Linf eps=0.02, alpha=0.005, 20 steps': lambda a, b, s: attacks.pgd(
          logits_fn, a, b, 0.02, 0.005, 20, seed=s),
      'PGD L2 eps=1.5, alpha=0.15, 20 steps': lambda a, b, s: attacks.pgd(
          logits_fn, a, b, 1.5, 0.15, 20, norm=2, seed=s),
      'CW L2 c=0.1, kappa=0, 100 steps x 5 searches': lambda a, b, s: (
          attacks.carlini_wagner_l2(logits_fn, a, b, c=0.1, steps=100,
                                    binary_search_steps=5, learning_rate=0.01)),
      'APGD-CE Linf eps=0.02, 50 steps': lambda a, b, s: attacks.apgd(
          logits_fn, a, b, 0.02, steps=50, loss='ce', seed=s),
      'APGD-DLR Linf eps=0.02, 50 steps': lambda a, b, s: attacks.apgd(
          logits_fn, a, b, 0.02, steps=50, loss='dlr', seed=s),
      'APGD-CE L2 eps=0.5, 50 steps': lambda a, b, s: attacks.apgd(
          logits_fn, a, b, 0.5, norm=2, steps=50, loss='ce', seed=s),
      'Square Linf eps=0.05, 1000 queries': lambda a, b, s: attacks.square(
          logits_fn, a, b, 0.05, queries=1000, seed=s),
      'Square L2 eps=1.0, 1000 queries': lambda a, b, s: attacks.square(
          logits_fn, a, b, 1.0, norm=2, queries=1000, seed=s),
  }
  theirs = {
      'FGSM Linf eps=0.1': evasion.FastGradientMethod(
          classifier, eps=0.1, batch_size=batch),
      'PGD Linf eps=0.1, alpha=0.01, 20 steps': evasion.ProjectedGradientDescent(
          classifier, norm=np.inf, eps=0.1, eps_step=0.01, max_iter=20,
          num_random_init=1, batch_size=batch, verbose=False),
      'PGD Linf eps=0.02, alpha=0.005, 20 steps': evasion.ProjectedGradientDescent(
          classifier, norm=np.inf, eps=0.02, eps_step=0.005, max_iter=20,
          num_random_init=1, batch_size=batch, verbose=False),
      'PGD L2 eps=1.5, alpha=0.15, 20 steps': evasion.ProjectedGradientDescent(
          classifier, norm=2, eps=1.5, eps_step=0.15, max_iter=20,
          num_random_init=1, batch_size=batch, verbose=False),
      'CW L2 c=0.1, kappa=0, 100 steps x 5 searches': evasion.CarliniL2Method(
          classifier, confidence=0.0, initial_const=0.1, max_iter=100,
          binary_search_steps=5, learning_rate=0.01, batch_size=batch,
          verbose=False),
      'APGD-CE Linf eps=0.02, 50 steps': evasion.AutoProjectedGradientDescent(
          classifier, norm=np.inf, eps=0.02, eps_step=0.04, max_iter=50,
          nb_random_init=1, batch_size=batch, loss_type='cross_entropy',
          verbose=False),
      'APGD-DLR Linf eps=0.02, 50 steps': evasion.AutoProjectedGradientDescent(
          classifier, norm=np.inf, eps=0.02, eps_step=0.04, max_iter=50,
          nb_random_init=1, batch_size=batch,
          loss_type='difference_logits_ratio', verbose=False),
      'APGD-CE L2 eps=0.5, 50 steps': evasion.AutoProjectedGradientDescent(
          classifier, norm=2, eps=0.5, eps_step=1.0, max_iter=50,
          nb_random_init=1, batch_size=batch, loss_type='cross_entropy',
          verbose=False),
      'Square Linf eps=0.05, 1000 queries': evasion.SquareAttack(
          classifier, norm=np.inf, eps=0.05, max_iter=1000, p_init=0.8,
          nb_restarts=1, batch_size=batch, verbose=False),
      'Square L2 eps=1.0, 1000 queries': evasion.SquareAttack(
          classifier, norm=2, eps=1.0, max_iter=1000, p_init=0.8,
          nb_restarts=1, batch_size=batch, verbose=False),
  }
  rows = []
  for name, attack in ours.items():
    if _ONLY.value and not name.startswith(tuple(_ONLY.value)):
      continue
    n = _CW_EXAMPLES.value if name.startswith('CW') else len(x)
    seeds = 1 if name.startswith(('FGSM', 'CW')) else _SEEDS.value
    our_time, our_success = _measure(attack, x[:n], y[:n], batch, predict,
                                     seeds)
    art = theirs[name]

    def art_attack(a, b, seed, art=art):
      np.random.seed(seed)  # ART draws its random starts with NumPy.
      return art.generate(a, y=b)

    # ART runs eagerly: a two-image call is warm-up enough.
    art_time, art_success = _measure(art_attack, x[:n], y[:n], batch, predict,
                                     seeds, warm_up=2)
    rows.append((name, n, our_time, art_time, art_time / our_time,
                 100 * our_success, 100 * art_success))
    print(rows[-1], flush=True)

  table = [
      f'Model: {model_name}; Fashion-MNIST test images; batch {batch}; '
      f'TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores.',
      '',
      '| attack | images | tf_slwta s/1000 | ART s/1000 | speed-up | '
      'tf_slwta success (%) | ART success (%) |',
      '|---|---|---|---|---|---|---|']
  for name, n, ours_s, art_s, ratio, ours_ok, art_ok in rows:
    table.append(f'| {name} | {n} | {ours_s:.2f} | {art_s:.2f} | '
                 f'{ratio:.1f}x | {ours_ok:.1f} | {art_ok:.1f} |')
  text = '\n'.join(table)
  print(text)
  if _WRITE.value and not _ONLY.value:  # A partial table replaces nothing.
    _write_section(text)


def _write_section(text):
  command = 'python benchmarks/attacks.py'
  section = f'{START}\nCommand: `{command}`\n\n{text}\n{END}'
  current = open(BENCHMARKS).read() if os.path.exists(BENCHMARKS) else (
      '# Benchmarks\n\n## Attacks: tf_slwta against ART\n\n'
      f'{START}\n{END}\n')
  head, rest = current.split(START, 1)
  tail = rest.split(END, 1)[1]
  with open(BENCHMARKS, 'w') as f:
    f.write(head + section + tail)


if __name__ == '__main__':
  app.run(main)

"""Monte Carlo / EOT passes one per call, or several in one call.

`--passes_per_call=k` runs k passes of a batch as one call on the batch
tiled k times (`attacks.eot.BatchedPasses`). Whether that is faster depends
on how busy one batch keeps the device. This measures, on a trained run and
its test images, the two costs an audit of a stochastic model is made of:

  decision   the decision rule: softmax averaged over --mc_samples passes;
  apgd       APGD-CE with --eot_samples passes per gradient and the
             decision between restarts (compiled as the evaluation does).

for k in --per_call at each batch size, in interleaved rounds within one
process (the median round is reported), so the ratios are side by side.
Outcomes are checked too: the batched APGD must leave the same robust
accuracy within the Monte Carlo error.

    python benchmarks/batched_passes.py --run=runs/slwta_seed_cnn
"""

import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import tf_slwta
from tf_slwta import attacks
from tf_slwta import data as data_lib
from tf_slwta.attacks import eot

_RUN = flags.DEFINE_string('run', 'runs/slwta_seed_cnn',
                           'Trained run of a stochastic model.')
_BATCHES = flags.DEFINE_list('batch_sizes', ['50', '200'], 'Batch sizes.')
_PER_CALL = flags.DEFINE_list('per_call', ['1', '2', '5', '10'],
                              'Passes per call to compare.')
_MC = flags.DEFINE_integer('mc_samples', 10, 'Passes per decision.')
_EOT = flags.DEFINE_integer('eot_samples', 10, 'Passes per gradient.')
_EPS = flags.DEFINE_float('eps', 0.0314, 'L-inf radius of APGD.')
_STEPS = flags.DEFINE_integer('steps', 10, 'APGD steps.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
_OUTPUT = flags.DEFINE_string('output', '', 'JSON file for the results.')


def main(argv):
  del argv
  model, _, config = tf_slwta.load_run(_RUN.value)
  images, labels = data_lib.load_arrays(config.data, 'test')
  plain = lambda z: model(z, training=False)
  results = []
  for batch in map(int, _BATCHES.value):
    x = tf.constant(images[:batch].astype(np.float32) / 255.0)
    y = tf.constant(labels[:batch].astype(np.int64))
    jobs = {}
    for k in map(int, _PER_CALL.value):
      fn = eot.batched(plain, k, 1 << 20)
      decide = tf.function(
          lambda z, fn=fn: eot.mean_probabilities(fn, z, _MC.value))
      attack = tf.function(
          lambda z, t, fn=fn: attacks.apgd(
              fn, z, t, _EPS.value, steps=_STEPS.value, loss='ce',
              eot_samples=_EOT.value, mc_samples=_MC.value))
      jobs[('decision', k)] = lambda d=decide: d(x).numpy()
      jobs[('apgd', k)] = lambda a=attack: a(x, y).numpy()
    for job in jobs.values():  # Trace and warm up.
      job()
    times = {key: [] for key in jobs}
    for _ in range(_ROUNDS.value):
      for key, job in jobs.items():
        start = time.perf_counter()
        job()
        times[key].append(time.perf_counter() - start)
    accuracy = {}
    for k in map(int, _PER_CALL.value):
      fn = eot.batched(plain, k, 1 << 20)
      adv = jobs[('apgd', k)]()
      accuracy[k] = float(np.mean(
          eot.predict(fn, tf.constant(adv), _MC.value).numpy() == y.numpy()))
    for (part, k), seconds in times.items():
      base = float(np.median(times[(part, 1)]))
      median = float(np.median(seconds))
      results.append({'batch': batch, 'part': part, 'per_call': k,
                      'seconds': median, 'speedup': base / median,
                      'robust_accuracy': accuracy[k] if part == 'apgd'
                      else None})
      print(f'batch {batch:4d}  {part:8s}  {k:2d} passes/call  '
            f'{median:8.3f} s  x{base / median:5.2f}' +
            (f'  robust {accuracy[k]:.3f}' if part == 'apgd' else ''),
            flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'w') as f:
      json.dump({'run': _RUN.value, 'mc_samples': _MC.value,
                 'eot_samples': _EOT.value, 'steps': _STEPS.value,
                 'eps': _EPS.value, 'rounds': _ROUNDS.value,
                 'device': [d.name for d in tf.config.list_logical_devices()],
                 'results': results}, f, indent=1)


if __name__ == '__main__':
  app.run(main)

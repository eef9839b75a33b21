"""Evaluation throughput on one device, two devices and two workers.

Runs the same robustness evaluation of a trained run three ways and checks
that the tables agree:

  1 device    one model copy on /cpu:0 (the default);
  2 devices   two logical CPU devices, one model copy each, taking batches
              as they free up (what several GPUs do);
  2 workers   two processes with TF_CONFIG on loopback ports, each taking
              every other batch (what several machines do).

Reported: images per second per attack run, wall time, and the speed-up
over one device. On this 2-core CPU the two devices (and the two workers)
share the same cores, so the speed-up says how little the split costs
rather than what GPUs gain; on a machine with N GPUs each copy has its own
device and the expected speed-up is close to N for attack-bound
evaluations (check with `nvidia-smi` that every GPU is busy).

    python benchmarks/eval_scaling.py --run=runs/quickstart --examples=2000
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from tf_slwta.training import tf_config

_RUN = flags.DEFINE_string('run', 'runs/quickstart', 'Trained run to attack.')
_EXAMPLES = flags.DEFINE_integer('examples', 2000, 'Test images.')
_BATCH = flags.DEFINE_integer('batch_size', 250, 'Images per batch.')
_ATTACKS = flags.DEFINE_list(
    'attack_flags', ['--attacks=apgd_ce,fgsm', '--aa_eps=0.05',
                     '--apgd_steps=20', '--fgsm_eps=0.05'],
    'Attack flags of the evaluation.')


def _evaluate(run, strategy, extra_env=None, workers=1):
  """Runs --mode=evaluate on a copy of `run`; (seconds, rows)."""
  folder = tempfile.mkdtemp(prefix='eval_scaling_')
  copy = os.path.join(folder, 'run')
  shutil.copytree(run, copy, ignore=shutil.ignore_patterns('evaluations'))
  args = [sys.executable, os.path.join(ROOT, 'main.py'), '--mode=evaluate',
          f'--output_dir={copy}', f'--eval_examples={_EXAMPLES.value}',
          f'--eval_batch_size={_BATCH.value}', f'--strategy={strategy}',
          *_ATTACKS.value]
  env = {**os.environ, **(extra_env or {})}
  env.pop('TF_CONFIG', None)
  start = time.perf_counter()
  if workers == 1:
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode:
      raise RuntimeError(done.stderr[-3000:])
  else:
    hosts = tf_config.local_workers(workers)
    procs = [subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**env, 'TF_CONFIG': json.dumps({
            'cluster': {'worker': hosts},
            'task': {'type': 'worker', 'index': i}})})
             for i in range(workers)]
    for proc in procs:
      _, err = proc.communicate()
      if proc.returncode:
        raise RuntimeError(err[-3000:])
  seconds = time.perf_counter() - start
  with open(os.path.join(copy, 'robustness.json')) as f:
    rows = json.load(f)['rows']
  shutil.rmtree(folder)
  return seconds, rows


def main(argv):
  del argv
  two_devices = {'TF_SLWTA_LOGICAL_CPUS': '2'}
  runs = {
      '1 device': _evaluate(_RUN.value, 'one_device'),
      '2 devices': _evaluate(_RUN.value, 'mirrored', two_devices),
      '2 workers': _evaluate(_RUN.value, 'multi_worker', workers=2),
  }
  strip = lambda rows: [{k: v for k, v in r.items() if k != 'seconds'}
                        for r in rows]
  base_seconds, base_rows = runs['1 device']
  print(f'Run {_RUN.value}, {_EXAMPLES.value} images, batches of '
        f'{_BATCH.value}, {" ".join(_ATTACKS.value)}; {os.cpu_count()} CPU '
        f'cores.\n')
  print('| setup | wall time (s) | images/s | speed-up | same table as 1 device |')
  print('|---|---|---|---|---|')
  for name, (seconds, rows) in runs.items():
    print(f'| {name} | {seconds:.1f} | {_EXAMPLES.value / seconds:.1f} | '
          f'{base_seconds / seconds:.2f}x | '
          f'{"yes" if strip(rows) == strip(base_rows) else "NO"} |')
  print('\nAttack time per row (summed over devices), 1 device:')
  for row in base_rows:
    if row.get('seconds'):
      print(f'  {row["attack"]}: {row["seconds"]:.1f} s, '
            f'{_EXAMPLES.value / row["seconds"]:.0f} images/s')


if __name__ == '__main__':
  app.run(main)

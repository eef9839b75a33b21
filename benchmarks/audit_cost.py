"""What an honest audit costs, next to AutoAttack's randomized version alone.

On one trained run and the same test images, side by side, each on a fresh
copy of the run folder (no evaluation record to reuse):

  aa_rand      python main.py --mode=evaluate --flagfile=attacks/autoattack_rand.cfg
               (and with other --attack_seed values: --aa_rand_seeds=0,1)
  audit        python main.py --mode=audit --flagfile=attacks/audit_cpu.cfg
  audit_before the same audit with another checkout's code (--before=DIR,
               e.g. a `git worktree` of an older commit), its own flagfile

with the run's radius (--aa_eps) and decision rule (--mc_samples). Prints
for each: wall-clock seconds, the worst case with its Monte Carlo and image
standard errors, and for the audits the attack seconds of each part (table,
eps sweep, steps sweep, ...) summed from their evaluation records. The
seconds of each table's first attack (APGD-CE, 100 steps, the cheapest
mode, every image, in both commands) are a crude gauge of the machine's
speed during each command (a shared CPU's speed drifts by 20% or more
between runs; set-up costs a command paid earlier shorten it: on the
LWTA recipe the audit's took half AutoAttack-rand's).

  python benchmarks/audit_cost.py --run=runs/slwta_seed_cnn_fashion_mnist \\
      --aa_eps=0.0314 --mc_samples=10 --examples=200 --before=../before

Writes the table to --output (JSON) too.
"""

import argparse
import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worst(folder):
  """The strongest number the command left in `folder`: the audit's worst
  case (escalated if it escalated), else robustness.json's combined row."""
  audit_path = os.path.join(folder, 'audit.json')
  if os.path.exists(audit_path):
    with open(audit_path) as f:
      saved = json.load(f)
    if saved.get('worst_case'):
      return saved['worst_case']
    rows = saved['rows']
  else:
    with open(os.path.join(folder, 'robustness.json')) as f:
      rows = json.load(f)['rows']
  return next(r for r in rows if r['attack'] == 'combined')


def _part_seconds(folder):
  """{part: attack seconds} summed from the newest evaluation's records."""
  evaluations = sorted(glob.glob(os.path.join(folder, 'evaluations', '*')),
                       key=os.path.getmtime)
  if not evaluations:
    return {}
  parts = {}
  for path in glob.glob(os.path.join(evaluations[-1], '*', 'batch-*.npz')):
    part = os.path.basename(os.path.dirname(path))
    with open(path, 'rb') as f:
      arrays = np.load(io.BytesIO(f.read()))
      seconds = sum(float(arrays[k]) for k in arrays.files
                    if k.startswith('seconds/'))
    name = ('table' if part == 'batches' else part.split('-')[0])
    parts[name] = parts.get(name, 0.0) + seconds
  return parts


def _lead_seconds(folder):
  """(label, attack seconds) of the table's first attack, from the newest
  evaluation's records: in AutoAttack-rand and the audit the same attack
  (APGD-CE, 100 steps, the cheapest mode, every image), a crude gauge of
  how fast the machine ran during each command."""
  evaluations = sorted(glob.glob(os.path.join(folder, 'evaluations', '*')),
                       key=os.path.getmtime)
  label, total = '', 0.0
  for path in glob.glob(os.path.join(evaluations[-1] if evaluations else '',
                                     'batches', 'batch-*.npz')):
    with open(path, 'rb') as f:
      arrays = np.load(io.BytesIO(f.read()))
      first = next((k for k in arrays.files if k.startswith('seconds/')), '')
      if first:
        label, total = first[len('seconds/'):], total + float(arrays[first])
  return label, total


# Run in another checkout: keeps of config.json only the settings that
# checkout knows (a run trained by newer code records fields it lacks).
_KNOWN_SETTINGS = r"""
import json, sys
from tf_slwta import config
known = config.ExperimentConfig().to_dict()
saved = json.load(open(sys.argv[1]))
kept = {key: ({k: v for k, v in value.items() if k in known[key]}
              if isinstance(known[key], dict) else value)
        for key, value in saved.items() if key in known}
json.dump(kept, open(sys.argv[1], 'w'), indent=2, sort_keys=True)
"""


def run(label, code, args, source, scratch):
  """Runs `python main.py ARGS` of checkout `code` on a copy of `source`."""
  folder = os.path.join(scratch, label)
  shutil.copytree(source, folder, ignore=shutil.ignore_patterns(
      'evaluations', '.lock'))
  env = {**os.environ, 'PYTHONPATH': code, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  if os.path.abspath(code) != REPO:
    # In that checkout's folder: `python -c` puts the current folder first
    # on sys.path, ahead of PYTHONPATH.
    subprocess.run([sys.executable, '-c', _KNOWN_SETTINGS,
                    os.path.join(folder, 'config.json')], env=env, check=True,
                   cwd=code)
  start = time.perf_counter()
  done = subprocess.run([sys.executable, os.path.join(code, 'main.py'),
                         f'--output_dir={folder}', *args], env=env,
                        capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if done.returncode:
    raise RuntimeError(f'{label} failed:\n{done.stderr[-3000:]}')
  worst = _worst(folder)
  return {'command': label, 'seconds': round(seconds, 1),
          'worst_case': worst['accuracy'], 'mc_se': worst.get('mc_se', 0.0),
          'image_se': worst.get('image_se', 0.0),
          'examples': worst['examples'], 'parts': _part_seconds(folder),
          'lead': _lead_seconds(folder)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--run', required=True, help='a trained run folder')
  parser.add_argument('--aa_eps', type=float, required=True)
  parser.add_argument('--mc_samples', type=int, default=10)
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--before', default='',
                      help='another checkout whose audit to time as well')
  parser.add_argument('--aa_rand_seeds', default='0',
                      help='attack seeds of AutoAttack-rand, one run each '
                      '(its own spread from seed to seed)')
  parser.add_argument('--skip', default='',
                      help='commands to leave out: aa_rand,audit,...')
  parser.add_argument('--output', default='runs/audit_cost.json')
  parser.add_argument('--keep', default='',
                      help='a folder to keep the run copies in (their '
                      'audit.json, robustness.json); default: a temporary '
                      'folder, deleted')
  args = parser.parse_args()
  common = [f'--aa_eps={args.aa_eps}', f'--mc_samples={args.mc_samples}',
            f'--eval_examples={args.examples}']
  jobs = [(f'aa_rand{"" if seed == "0" else "_seed" + seed}', REPO,
           ['--mode=evaluate', '--flagfile=attacks/autoattack_rand.cfg',
            f'--attack_seed={seed}', *common])
          for seed in args.aa_rand_seeds.split(',')]
  jobs.append(('audit', REPO, ['--flagfile=attacks/audit_cpu.cfg', *common]))
  if args.before:
    flagfile = os.path.join(args.before, 'flags', 'attacks', 'audit_cpu.cfg')
    jobs.append(('audit_before', os.path.abspath(args.before),
                 [f'--flagfile={flagfile}', *common]))
  skip = set(args.skip.split(','))
  results = []
  with tempfile.TemporaryDirectory() as temporary:
    scratch = args.keep or temporary
    os.makedirs(scratch, exist_ok=True)
    for label, code, job_args in jobs:
      if label in skip:
        continue
      results.append(run(label, code, job_args, args.run, scratch))
      print(json.dumps(results[-1]), flush=True)
  base = next((r['seconds'] for r in results if r['command'] == 'aa_rand'),
              None)
  print(f'\n{args.run}, {args.examples} images, eps {args.aa_eps}, '
        f'{args.mc_samples} passes per decision:\n')
  print('| command | seconds | x aa_rand | worst case (%) | parts (attack s) '
        '| first attack (s; a crude gauge of the machine\'s speed) |\n'
        '|---|---|---|---|---|---|')
  for r in results:
    parts = ', '.join(f'{k} {v:.0f}' for k, v in sorted(r['parts'].items()))
    ratio = f'{r["seconds"] / base:.2f}' if base else '-'
    print(f'| {r["command"]} | {r["seconds"]:.0f} | {ratio} | '
          f'{100 * r["worst_case"]:.1f} ± {100 * r["mc_se"]:.1f} MC ± '
          f'{100 * r["image_se"]:.1f} img | {parts} | {r["lead"][0]} '
          f'{r["lead"][1]:.1f} |')
  os.makedirs(os.path.dirname(args.output) or '.', exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()

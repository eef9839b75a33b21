"""Every README command that fits in seconds, run as written on tiny data,
in a terminal.

The repository's tracked files are copied to a temporary folder (a fresh
clone) whose flagfiles get tiny overrides appended (synthetic data, one
epoch, small models, short attacks); then each `python main.py ...` of the
README runs there, in README order after the default job, through
`main.run` (the whole command without a process of its own: TensorFlow
loads once), with a pseudo-terminal as its output, as a person runs it:
the default job, evaluate, audit, certify, grid and export; then predict,
through a stand-in TF Serving. `--help` and a run from another folder run
as processes.
"""

import json
import os
import re
import shlex
import subprocess
import sys

from cli_fixtures import copy_repository
import numpy as np
import pytest
from serving_standin import ServingStandIn
import tensorflow as tf
import terminal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = """
# Appended by tests/test_readme.py: the same commands on tiny data.
--dataset=synthetic
--train_examples=32
--eval_examples=8
--batch_size=16
--eval_batch_size=8
--epochs=1
--seed_cnn_filters=4,8
--seed_cnn_units=16
--depth=10
--strategy=one_device
--pgd_steps=2
--pgd_restarts=1
--cw_steps=2
--cw_binary_search_steps=1
--eot_samples=1
--mc_samples=1
--gradient_modes=sample
--apgd_steps=2
--apgd_restarts=1
--apgd_target_classes=1
--cascade_focus_eot=1
--cascade_focus_steps=2
--square_queries=2
--decision_repeats=1
--audit_sweep_examples=4
--audit_steps=1,2
--audit_eps_multiples=1,2
--audit_noise_draws=1
--audit_escalation_rounds=1
--audit_escalation_queries=20
--certify_n0=5
--certify_n=20
--certify_batch_size=20
"""
# Commands left out, and why.
SKIPPED = {
    'cifar10': 'CIFAR-10 recipes are sized for a GPU (tensorflow-datasets)',
    'wrn34': 'WRN-34 recipes are sized for a GPU',
    'multi_worker': 'needs several machines (tested in test_cli)',
    '--helpfull': "absl's full help exits the process (see --help below)",
}
# The seven seed-table rows take minutes even on tiny data; the two-row grid
# command runs the same code.
SKIPPED_EXACTLY = {'python main.py --mode=grid'}


def readme_commands():
  """Every `python main.py ...` of README.md, as argv lists: those of its
  code blocks, then those in its prose, each once, in README order."""
  text = open(os.path.join(REPO, 'README.md'), encoding='utf-8').read()
  found = []
  for block in re.findall(r'```sh\n(.*?)```', text, re.S):
    joined = block.replace('\\\n', ' ')
    for line in joined.splitlines():
      line = line.strip()
      if line.startswith('python main.py'):
        found.append(shlex.split(line, comments=True)[1:])
  found += [shlex.split(inline)[1:]  # In prose.
            for inline in re.findall(r'`(python main\.py[^`]*)`', text)]
  commands = []
  for args in found:
    if args not in commands:
      commands.append(args)
  return commands


def expected_mode(args):
  """The --mode a README command says it runs (the typed one wins)."""
  modes = [a.split('=', 1)[1] for a in args if a.startswith('--mode=')]
  return modes[-1] if modes else 'train'


_SETTINGS_LINE = re.compile(
    r'^(train|evaluate|audit|certify|export|predict|grid)[ :]', re.M)


def fresh_clone(target):
  copy_repository(target)
  for folder, _, names in os.walk(os.path.join(target, 'flags')):
    for name in names:
      if name.endswith('.cfg'):
        with open(os.path.join(folder, name), 'a', encoding='utf-8') as f:
          f.write(TINY)


# Runs the commands one after another in one process (TensorFlow loads once)
# of its own: strategies made by earlier tests in pytest's process would
# share its collective-op instance keys.
# Each command's output follows a README-START line; its README-COMMAND
# line lists the run records (config.json) it wrote or changed.
_DRIVER = r"""
import glob, importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location('main', 'main.py')
main = importlib.util.module_from_spec(spec)
spec.loader.exec_module(main)

def records():
  return {path: open(path, 'rb').read()
          for path in glob.glob('runs/**/config.json', recursive=True)}

for args in json.load(open(sys.argv[1])):
  before = records()
  print('README-START', flush=True)
  start = time.perf_counter()
  code = main.run(args)
  seconds = round(time.perf_counter() - start, 1)
  written = sorted(p for p, text in records().items() if before.get(p) != text)
  print('\nREADME-COMMAND', json.dumps({'args': args, 'code': code,
        'seconds': seconds, 'written': written}), flush=True)
  if code:
    break
"""


def _run_in_terminal(commands, clone, listing):
  """Runs README commands through `_DRIVER` with a pseudo-terminal as their
  output; returns one record per command: 'args', 'code', 'seconds',
  'written', 'mode' (from the settings line each prints first), 'output'."""
  listing.write_text(json.dumps(commands))
  code, text = terminal.in_terminal(
      [sys.executable, '-c', _DRIVER, str(listing)], clone)
  ran = []
  for output in text.split('README-START\n')[1:]:
    output, _, record = output.rpartition('\nREADME-COMMAND ')
    ran.append(json.loads(record.splitlines()[0]))
    settings = _SETTINGS_LINE.search(output)  # Printed first by every mode.
    ran[-1]['mode'] = settings.group(1) if settings else None
    ran[-1]['output'] = output
  failed = [r for r in ran if r['code']]
  assert code == 0 and not failed and len(ran) == len(commands), (
      f'{failed or "stopped"}\n{text[-4000:]}')
  assert 'Traceback' not in text, text[-4000:]
  return ran


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, capsys):
  clone = tmp_path / 'clone'
  fresh_clone(str(clone))
  commands = readme_commands()
  assert ['main.py'] in commands  # make demo
  # The default job first, then the other trainings, then the rest, each in
  # README order: the other modes use the runs the trainings leave behind.
  trains = [c for c in commands if c != ['main.py'] and not any(
      a.startswith('--mode=') and a != '--mode=train' for a in c)]
  ordered = [['main.py']] + trains + [c for c in commands
                                      if c != ['main.py'] and c not in trains]
  chosen, skipped = [], []
  for args in ordered:
    line = ' '.join(['python', *args])
    reason = next((why for key, why in SKIPPED.items() if key in line),
                  'seven trainings' if line in SKIPPED_EXACTLY else None)
    (skipped if reason else chosen).append(args)
  predicts = [c for c in chosen if '--mode=predict' in c]
  ran = _run_in_terminal([c for c in chosen if c not in predicts], clone,
                         tmp_path / 'commands.json')
  # Then predict, through a stand-in TF Serving on what export wrote, at
  # the stand-in's address; the image files the README names are made.
  for name, encode in (('shoe.png', tf.io.encode_png),
                       ('bag.jpg', tf.io.encode_jpeg)):
    (clone / name).write_bytes(encode(tf.zeros([28, 28, 1], tf.uint8)).numpy())
  with ServingStandIn({'quickstart': str(clone / 'saved_models' /
                                         'quickstart')}) as server:
    address = {'rest': server.rest_address, 'grpc': server.grpc_address}
    ran += _run_in_terminal([[
        f'--server={address["grpc" if "--serving_protocol=grpc" in c else "rest"]}'
        if a.startswith('--server=') else a for a in c] for c in predicts],
                            clone, tmp_path / 'predicts.json')
  assert len(predicts) == 2
  assert len(ran) == len(chosen)
  assert len(ran) >= 9
  # In a terminal, every mode that runs long drew its progress line.
  drawn = {r['mode'] for r in ran if any(
      re.match(r'(epoch \d+/\d+|robustness|audit table|certify|predict) +'
               r'\d+% \[', f) for f in terminal.frames(r['output']))}
  assert {'train', 'evaluate', 'audit', 'certify', 'predict'} <= drawn, drawn
  assert any('accuracy' in r['output'] and r['mode'] == 'predict'
             for r in ran)
  for r in ran:  # Each did what its text says, and only training records.
    line = 'python ' + ' '.join(r['args'])
    if '--help' in r['args']:
      assert r['mode'] is None and 'usage:' in r['output'], line
      continue
    assert r['mode'] == expected_mode(r['args']), (line, r['output'][:500])
    if r['mode'] not in ('train', 'grid'):
      assert not r['written'], (line, r['written'])
  assert 'runs/slwta_twin/config.json' in [
      p for r in ran for p in r['written']]  # The README trains the twin.
  with capsys.disabled():
    print('\nREADME commands run:\n  ' + '\n  '.join(
        f'python {" ".join(r["args"])}  ({r["seconds"]} s)' for r in ran))
  lines = [' '.join(['python', *a]) for a in skipped]
  assert all(any(key in line for key in SKIPPED) or line in SKIPPED_EXACTLY
             for line in lines)
  # What they leave behind, as the README says.
  for name in ('config.json', 'metrics.jsonl', 'results.json',
               'robustness.md', 'report.html', 'certify.md'):
    assert (clone / 'runs' / 'quickstart' / name).exists(), name
  assert (clone / 'runs' / 'slwta_fashion_mnist' / 'audit.md').exists()
  assert (clone / 'saved_models' / 'quickstart' / '1' / 'saved_model.pb').exists()
  assert (clone / 'runs' / 'seed_table' / 'grid.md').exists()  # Two rows.

  # The README's Python: a run's model and decision in two lines.
  import tf_slwta  # pylint: disable=g-import-not-at-top
  model, decide, config = tf_slwta.load_run(str(clone / 'runs' / 'quickstart'))
  images = np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
  assert decide(images).shape == (3,) and model(images).shape == (3, 10)
  assert config.data.dataset == 'synthetic' and config.train.epochs == 12


@pytest.mark.slow
def test_help_and_a_run_from_another_folder(tmp_path):
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  main = os.path.join(REPO, 'main.py')
  shown = subprocess.run([sys.executable, main, '--help'], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120)
  assert shown.returncode == 0
  for title in ('Data:', 'Model', 'Attacks', 'Training', '--pgd_eps=0.3'):
    assert title in shown.stdout, title
  assert subprocess.run([sys.executable, main, '-h'], capture_output=True,
                        cwd=elsewhere, timeout=120).returncode == 0
  # A flagfile that includes another, named from outside the repository.
  smoke = os.path.join(REPO, 'flags', 'smoke.cfg')
  quick = os.path.join(REPO, 'flags', 'quickstart.cfg')
  result = subprocess.run(
      [sys.executable, main, f'--flagfile={quick}', f'--flagfile={smoke}',
       '--output_dir=run', '--epochs=1', '--train_examples=64',
       '--eval_examples=32', '--noevaluate_robustness',
       '--strategy=one_device'],
      cwd=elsewhere, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (elsewhere / 'run' / 'results.json').exists()
  first = result.stdout.splitlines()[0]  # The one-line settings summary.
  assert first.startswith('train run: synthetic') and 'config.json' in first
  noise = ('oneDNN', 'cuda', 'cpu_feature_guard', 'absl::InitializeLog')
  assert not [l for l in result.stderr.splitlines()
              if any(n in l for n in noise)], result.stderr

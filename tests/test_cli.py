"""The command line: flagfiles, validation, and main.py end to end."""

import glob
import json
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from cli_fixtures import parse_command
from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta.training import tf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(REPO, 'flags', '**', '*.cfg'),
                             recursive=True))


def parse(*args):
  """The ExperimentConfig of `python main.py ARGS` run from the repository."""
  return parse_command(*args)[0]


def test_there_are_flagfiles():
  names = {os.path.relpath(f, os.path.join(REPO, 'flags')) for f in FLAGFILES}
  assert {'quickstart.cfg', 'smoke.cfg', 'wrn34_cifar10.cfg',
          'attacks/seed.cfg', 'attacks/strong.cfg'} <= names


@pytest.mark.parametrize('path', FLAGFILES,
                         ids=[os.path.relpath(f, REPO) for f in FLAGFILES])
def test_every_flagfile_parses(path):
  config = parse(f'--flagfile={path}')
  assert isinstance(config, config_lib.ExperimentConfig)
  assert config.output_dir.startswith('runs/')


def test_quickstart_is_the_default_job(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No runs/quickstart/config.json here.
  config = parse(f'--flagfile={os.path.join(REPO, "flags", "quickstart.cfg")}')
  assert (config.mode, config.data.dataset, config.model.name) == (
      'train', 'fashion_mnist', 'seed_cnn')
  argv = cli.with_default_flagfile(['main.py', '--epochs=1'], 'q.cfg')
  assert argv == ['main.py', '--flagfile=q.cfg', '--epochs=1']
  own = ['main.py', '--flagfile=mine.cfg']
  assert cli.with_default_flagfile(own, 'q.cfg') == own


def test_seed_recipe_flagfile():
  config = parse(f'--flagfile={os.path.join(REPO, "flags", "wrn34_cifar10.cfg")}')
  assert (config.model.name, config.model.depth, config.model.widen_factor) == (
      'wide_resnet', 34, 1)
  assert (config.train.epochs, config.train.learning_rate) == (30, 0.1)
  assert config.data.use_augmentation


def test_seed_attack_settings():
  attack = parse('--flagfile=flags/attacks/seed.cfg').attack
  assert (attack.fgsm_eps, attack.pgd_eps, attack.pgd_alpha, attack.pgd_steps,
          attack.cw_c, attack.cw_kappa, attack.cw_steps) == (
              0.3, 0.3, 0.01, 3, 1e-4, 0.01, 3)
  strong = parse('--flagfile=flags/attacks/strong.cfg')
  assert strong.attack.pgd_steps >= 50 and strong.attack.pgd_restarts > 1
  assert strong.attack.cw_steps >= 100 and strong.attack.cw_binary_search_steps > 1
  assert strong.attack.eot_samples > 1 and strong.attack.mc_samples > 1
  quick = parse('--flagfile=flags/quickstart.cfg')
  assert quick.evaluate_robustness and quick.attack == attack


@pytest.mark.parametrize('args,named', [
    (['--batch_size=0'], 'batch_size'),
    (['--model=wide_resnet', '--depth=33'], 'depth'),
    (['--label_smoothing=1.5'], 'label_smoothing'),
    (['--momentum=1.0'], 'momentum'),
    (['--learning_rate=-0.1'], 'learning_rate'),
    (['--dataset=imagenet'], 'dataset'),
    (['--seed_cnn_filters=a,b'], 'seed_cnn_filters'),
    (['--lr_schedule=step', '--lr_decay_epochs=5,3'], 'lr_decay_epochs'),
    (['--mode=dance'], 'mode'),
    (['--attacks=fgsm,deepfool'], 'attacks'),
    (['--pgd_eps=0.1', '--pgd_alpha=0.2'], 'pgd_alpha'),
    (['--mc_samples=0'], 'mc_samples'),
])
def test_bad_values_are_refused_naming_the_flag(args, named):
  with pytest.raises(flags.Error, match=named):
    parse(*args)


def test_multi_worker_needs_tf_config(monkeypatch):
  monkeypatch.delenv('TF_CONFIG', raising=False)
  with pytest.raises(flags.Error, match='TF_CONFIG'):
    parse('--strategy=multi_worker')
  monkeypatch.setenv('TF_CONFIG', '{"cluster": {}}')
  with pytest.raises(flags.Error, match='TF_CONFIG'):
    parse('--strategy=multi_worker')


def run_main(*args, env=None, timeout=300):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', **(env or {})})


SMOKE = f'--flagfile={os.path.join(REPO, "flags", "smoke.cfg")}'


@pytest.mark.slow
def test_bad_flag_is_refused_before_any_work(tmp_path):
  out = tmp_path / 'never'
  result = run_main(SMOKE, f'--output_dir={out}', '--label_smoothing=2')
  assert result.returncode != 0
  assert 'label_smoothing' in result.stderr
  assert not out.exists()


@pytest.mark.slow
def test_main_trains_and_evaluates_end_to_end(tmp_path):
  out = tmp_path / 'run'
  trained = run_main(SMOKE, f'--output_dir={out}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'Results of' in trained.stdout and 'accuracy (%)' in trained.stdout
  assert 'epoch 2 step 8/8' in trained.stdout  # Progress lines.
  with open(out / 'results.json') as f:
    results = json.load(f)
  assert results['epoch'] == 2 and results['test/examples'] == 256
  assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2
  assert glob.glob(str(out / 'summaries' / 'events.*'))
  evaluated = run_main(SMOKE, f'--output_dir={out}', '--mode=evaluate')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(out / 'eval_results.json') as f:
    assert json.load(f)['accuracy'] == pytest.approx(results['test/accuracy'])
  assert 'Robustness on 256 test images' in evaluated.stdout
  with open(out / 'robustness.json') as f:
    attacks_run = [r['attack'] for r in json.load(f)['rows']]
  assert attacks_run == ['natural', 'fgsm', 'pgd_linf', 'pgd_l2', 'cw',
                         'combined']
  row = re.search(r'^test\s+([\d.]+)', evaluated.stdout, re.M)
  assert float(row.group(1)) == pytest.approx(
      100 * results['test/accuracy'], abs=0.01)
  # The same output_dir with another model is refused, and nothing is lost.
  other = run_main(SMOKE, f'--output_dir={out}', '--seed_cnn_units=64')
  assert other.returncode == 1
  assert '--seed_cnn_units=64 (the run has 32)' in other.stderr
  assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2


# A killed run resuming bit-identically: tests/test_resume.py.


@pytest.mark.slow
def test_two_workers_train_together(tmp_path):
  workers = tf_config.local_workers(2)
  args = [SMOKE, '--strategy=multi_worker', f'--output_dir={tmp_path / "mw"}']
  procs = []
  for index in range(2):
    cluster = json.dumps({'cluster': {'worker': workers},
                          'task': {'type': 'worker', 'index': index}})
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'TF_CONFIG': cluster,
             'TF_CPP_MIN_LOG_LEVEL': '2'}))
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=300))
  finally:
    for proc in procs:
      proc.kill()
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]

  # The chief keeps each epoch's record; both print its line.
  chief = json.loads((tmp_path / 'mw' / 'metrics.jsonl').read_text(
  ).splitlines()[-1])
  line = (f'Epoch 2/2: train loss {chief["train/loss"]:.4f}, accuracy '
          f'{100 * chief["train/accuracy"]:.2f}%; test loss '
          f'{chief["test/loss"]:.4f}')
  assert re.search(f'^{re.escape(line)}', outputs[0][0], re.M)
  assert f'Worker 1: {line}' in outputs[1][0], outputs[1][0][-3000:]
  assert 'Results of' in outputs[0][0] and 'Results of' not in outputs[1][0]
  assert (tmp_path / 'mw' / 'results.json').exists()
  assert not (tmp_path / 'worker1_tmp').exists()
  # Worker i reads every 2nd example of each global batch, so together they
  # train on the batches one device sees: the same loss.
  single = run_main(SMOKE, '--strategy=one_device',
                    f'--output_dir={tmp_path / "single"}')
  assert single.returncode == 0, single.stderr[-3000:]
  with open(tmp_path / 'single' / 'results.json') as f:
    alone = json.load(f)
  assert chief['train/loss'] == pytest.approx(alone['train/loss'], rel=1e-4)
  assert chief['test/loss'] == pytest.approx(alone['test/loss'], rel=1e-4)

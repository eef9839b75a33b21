"""The command line: flagfiles, validation, and main.py end to end."""

import glob
import json
import os
import re
import subprocess
import sys
import time

from absl import flags
import pytest

from cli_fixtures import parse_command
from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import folder_lock
from tf_slwta import run_folder
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


def test_typed_flags_override_every_flagfile_wherever_they_stand():
  # The README's command: --mode before the recipe, --aa_eps after the
  # attack flagfile; both typed, so both win.
  config = parse('--mode=evaluate', '--flagfile=flags/slwta_fashion_mnist.cfg',
                 '--flagfile=flags/attacks/autoattack_rand.cfg',
                 '--aa_eps=0.0314')
  assert (config.mode, config.output_dir) == ('evaluate',
                                              'runs/slwta_fashion_mnist')
  assert config.attack.aa_eps == 0.0314
  assert config.attack.attacks == ('apgd_ce', 'apgd_dlr')  # The later file.
  assert parse('--aa_eps=0.0314', '--flagfile=flags/attacks/autoattack.cfg'
               ).attack.aa_eps == 0.0314
  assert not parse('--noibp', '--flagfile=flags/slwta_fashion_mnist.cfg'
                   ).model.ibp
  # Of two flagfiles the later wins; a recipe never sets the mode, so a mode
  # flagfile's --mode stands in either order.
  recipe, audit = 'flags/slwta_fashion_mnist.cfg', 'flags/attacks/audit_cpu.cfg'
  after = parse(f'--flagfile={recipe}', f'--flagfile={audit}')
  before = parse(f'--flagfile={audit}', f'--flagfile={recipe}')
  assert after.mode == before.mode == 'audit'
  assert (after.data.eval_examples, before.data.eval_examples) == (500, 1000)
  assert parse('--mode=train', f'--flagfile={audit}').mode == 'train'
  # A typed flag and a flagfile's: the expansion puts the typed ones last.
  argv = cli.expand_flagfiles(['main.py', '--mode=evaluate',
                               f'--flagfile={os.path.join(REPO, audit)}'])
  assert argv[0] == 'main.py' and argv[-1] == '--mode=evaluate'
  assert '--mode=audit' in argv[1:-1]


def test_only_mode_flagfiles_set_a_mode():
  setting = sorted(os.path.relpath(path, REPO) for path in FLAGFILES if any(
      arg.startswith('--mode=') for arg in cli.expand_flagfiles(
          ['main.py', f'--flagfile={path}'])))
  assert setting == ['flags/attacks/audit_cpu.cfg']


def test_grid_rows_take_their_overrides_flagfile_last():
  row = os.path.join(REPO, 'flags', 'seed_table', '2_noise_injection.cfg')
  overrides = os.path.join(REPO, 'flags', 'attacks', 'strong.cfg')
  config = cli.parse_flagfiles([row, overrides])
  assert config.model.pni == 'activation' and config.train.epochs == 5
  assert config.attack.pgd_steps == 50  # strong.cfg over the row's seed.cfg.
  assert config.mode == 'train'


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


def test_only_training_writes_a_runs_config(tmp_path):
  folder = run_folder.RunFolder(str(tmp_path))
  for mode in ('evaluate', 'audit', 'certify', 'export', 'predict'):
    with pytest.raises(run_folder.RunFolderError, match='only --mode=train'):
      folder.write_config(config_lib.ExperimentConfig(
          mode=mode, output_dir=str(tmp_path)))
  assert not (tmp_path / 'config.json').exists()
  folder.write_config(config_lib.ExperimentConfig(output_dir=str(tmp_path)))
  assert folder.saved_settings()['mode'] == 'train'


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
  assert 'epoch 2/2: 100%, 8/8 steps' in trained.stdout  # Progress lines.
  with open(out / 'results.json') as f:
    results = json.load(f)
  assert results['epoch'] == 2 and results['test/examples'] == 256
  assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2
  assert glob.glob(str(out / 'summaries' / 'events.*'))
  recorded = (out / 'config.json').read_bytes()
  evaluated = run_main(SMOKE, f'--output_dir={out}', '--mode=evaluate')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert evaluated.stdout.startswith(f'evaluate {out}: ')  # Not a training.
  assert (out / 'config.json').read_bytes() == recorded
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
  # The audit, typed before the recipe as the README types it: it audits,
  # and neither it nor the evaluation rewrites the run's record.
  audited = run_main('--mode=audit', SMOKE, f'--output_dir={out}',
                     '--attacks=apgd_ce', '--apgd_steps=2',
                     '--eval_examples=16',
                     '--audit_sweep_examples=4', '--audit_steps=1,2',
                     '--audit_eps_multiples=1,2', '--audit_noise_draws=1')
  assert audited.returncode == 0, audited.stderr[-3000:]
  assert audited.stdout.startswith(f'audit {out}: ')
  assert (out / 'audit.json').exists()
  assert (out / 'config.json').read_bytes() == recorded
  # The same output_dir with another model is refused, and nothing is lost.
  other = run_main(SMOKE, f'--output_dir={out}', '--seed_cnn_units=64')
  assert other.returncode == 1
  assert '--seed_cnn_units=64 (the run has 32)' in other.stderr
  assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2


# A killed run resuming bit-identically: tests/test_resume.py.


@pytest.mark.slow
def test_a_busy_folder_is_refused_before_tensorflow_loads(tmp_path):
  out = tmp_path / 'busy'
  with folder_lock.locked(str(out)):
    with folder_lock.locked(str(out)):  # Re-entrant within a process.
      pass
    for mode in ('train', 'evaluate', 'audit', 'certify'):
      start = time.perf_counter()
      refused = run_main(SMOKE, f'--output_dir={out}', f'--mode={mode}')
      seconds = time.perf_counter() - start
      assert refused.returncode == 1, refused.stderr[-3000:]
      assert f'{out} is in use by process {os.getpid()}' in refused.stderr
      assert 'pass another --output_dir' in refused.stderr
      assert seconds < 5, (mode, seconds)  # TensorFlow alone takes 12-50 s.
      assert refused.stdout == ''  # Not even the settings line.
  assert os.listdir(out) == ['.lock']  # Nothing else written.


def test_a_missing_transfer_source_says_how_to_train_the_twin(tmp_path):
  recipe = os.path.join(REPO, 'flags', 'slwta_fashion_mnist.cfg')
  attacks = os.path.join(REPO, 'flags', 'attacks', 'autoattack_rand.cfg')
  assert cli.recipe_flagfile(['main.py', '--mode=audit', f'--flagfile={recipe}',
                              f'--flagfile={attacks}']) == recipe
  assert cli.recipe_flagfile(['main.py', f'--flagfile={attacks}']) is None
  twin = tmp_path / 'twin'
  with pytest.raises(run_folder.RunFolderError) as raised:
    run_folder.check_transfer_source(str(twin), 'flags/slwta_fashion_mnist.cfg')
  assert str(raised.value) == (
      f'--transfer_from={twin} holds no trained run (no config.json); train '
      f"the source model first, e.g. the recipe's ReLU twin: python main.py "
      f'--flagfile=flags/slwta_fashion_mnist.cfg --activation=relu --noibp '
      f'--output_dir={twin}')
  run_folder.RunFolder(str(twin)).write_config(
      config_lib.ExperimentConfig(output_dir=str(twin)))
  with pytest.raises(run_folder.RunFolderError, match=r'\(no checkpoint\); '
                     r'.* --flagfile=RECIPE.cfg --activation=relu'):
    run_folder.check_transfer_source(str(twin))
  with pytest.raises(flags.Error, match='--flagfile=RECIPE.cfg --activation'):
    parse('--attacks=transfer')  # And no source named at all.


@pytest.mark.slow
def test_the_command_refuses_a_missing_transfer_source_at_once(tmp_path):
  start = time.perf_counter()
  refused = run_main('--mode=audit', SMOKE, f'--output_dir={tmp_path / "run"}',
                     f'--transfer_from={tmp_path / "twin"}')
  assert time.perf_counter() - start < 5  # Before TensorFlow loads.
  assert refused.returncode == 1 and refused.stdout == ''
  assert refused.stderr.strip() == (
      f'error: --transfer_from={tmp_path / "twin"} holds no trained run (no '
      f"config.json); train the source model first, e.g. the recipe's ReLU "
      f'twin: python main.py {SMOKE} --activation=relu --noibp '
      f'--output_dir={tmp_path / "twin"}')
  assert not (tmp_path / 'run').exists()  # Nothing made.


def test_only_the_chief_of_a_multi_worker_run_takes_the_lock(monkeypatch):
  def cluster(task_type, index, chief=False):
    spec = {'worker': ['h1:1', 'h2:2']}
    if chief:
      spec['chief'] = ['h0:0']
    monkeypatch.setenv('TF_CONFIG', json.dumps(
        {'cluster': spec, 'task': {'type': task_type, 'index': index}}))

  monkeypatch.delenv('TF_CONFIG', raising=False)
  assert tf_config.is_chief('auto') and tf_config.is_chief('one_device')
  cluster('worker', 0)
  assert tf_config.is_chief('multi_worker') and tf_config.is_chief('auto')
  cluster('worker', 1)
  assert not tf_config.is_chief('multi_worker')
  assert not tf_config.is_chief('auto')  # auto with two workers: multi-worker.
  assert tf_config.is_chief('one_device')  # Not a multi-worker run.
  cluster('worker', 0, chief=True)
  assert not tf_config.is_chief('multi_worker')
  cluster('chief', 0, chief=True)
  assert tf_config.is_chief('multi_worker')


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

"""tf_slwta as an installed package: recipes by name, honest errors, the wheel.

The slow test builds the wheel from the tracked files, installs it with its
dependencies into a fresh virtual environment, and there, from a folder
outside the repository, runs the `tf-slwta` console script and `python -m
tf_slwta` as a person would, and loads CIFAR-10 through the project's data
loader inside `tfds.testing.mock_data`.
"""

import json
import os
import subprocess
import sys
import time

from cli_fixtures import copy_repository
import pytest

from tf_slwta import cli
from tf_slwta import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recipes_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # No flags/ here.
  quick = cli.expand_flagfiles(['m', '--flagfile=quickstart.cfg'])
  assert '--output_dir=runs/quickstart' in quick
  assert '--attacks=fgsm,pgd_linf,pgd_l2,cw' in quick  # attacks/seed.cfg
  assert cli.expand_flagfiles(['m', '--flagfile=flags/quickstart.cfg']) == quick
  assert cli.expand_flagfiles(['m', '--flagfile', 'quickstart.cfg']) == quick
  assert '--fgsm_eps=0.3' in cli.expand_flagfiles(
      ['m', '--flagfile=attacks/seed.cfg'])
  row = cli.expand_flagfiles(
      ['m', '--flagfile=seed_table/cifar10/1_regular.cfg'])
  assert row[-1] == '--output_dir=runs/seed_table_cifar10/1_regular'
  assert '--dataset=cifar10' in row
  rows = cli.glob_flagfiles('flags/seed_table/[0-9]*.cfg')
  assert [os.path.basename(p) for p in rows][::6] == [
      '1_regular.cfg', '7_smoothing_pgd_fgsm_cw_pni.cfg']
  # They ship inside the package, and the repository's flags/ is them.
  assert cli.packaged_flagfile('quickstart.cfg') == os.path.join(
      REPO, 'tf_slwta', 'flags', 'quickstart.cfg')
  assert os.path.samefile(os.path.join(REPO, 'flags'), cli.FLAGS_DIR)
  # A file of that name here comes first.
  (tmp_path / 'quickstart.cfg').write_text('--epochs=7\n')
  assert cli.expand_flagfiles(['m', '--flagfile=quickstart.cfg']) == [
      'm', '--epochs=7']
  with pytest.raises(cli.FlagfileError,
                     match=r'--flagfile=nothere.cfg cannot be read .* by name'):
    cli.expand_flagfiles(['m', '--flagfile=nothere.cfg'])


def test_a_missing_module_of_tfds_is_named_not_blamed_on_the_network(
    monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def load(*args, **kwargs):
    del args, kwargs
    raise ModuleNotFoundError("No module named 'importlib_resources'",
                              name='importlib_resources')

  monkeypatch.setattr(tfds, 'load', load)
  with pytest.raises(data_lib.DataError) as raised:
    data_lib.load_tfds('mnist', 'test')
  message = str(raised.value)
  assert 'importlib_resources is not installed' in message
  assert 'pip install importlib_resources' in message
  assert 'network' not in message


# pip's words for an index it cannot reach (a wrong requirement still fails).
_OFFLINE = ('NewConnectionError', 'Network is unreachable',
            'Temporary failure in name resolution')

# Run in the fresh environment: where tf_slwta and its default job come
# from, its metadata, and CIFAR-10 through the project's loader on TFDS's
# mock data.
_CHECKS = r"""
import importlib.metadata, json
import tensorflow_datasets as tfds
import tf_slwta
from tf_slwta import config, data
from tf_slwta.cli import main
meta = importlib.metadata.metadata('tf_slwta')
with tfds.testing.mock_data(num_examples=12):
  images, labels = data.load_arrays(
      config.DataConfig(dataset='cifar10', eval_examples=10), 'test')
print(json.dumps({
    'package': tf_slwta.__file__, 'quickstart': main.QUICKSTART,
    'license': meta['License'], 'author': meta['Author'],
    'requires': meta.get_all('Requires-Dist'),
    'images': [list(images.shape), str(images.dtype)],
    'labels': [list(labels.shape), str(labels.dtype)]}))
"""


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_any_folder(tmp_path):
  source, venv = tmp_path / 'source', tmp_path / 'venv'
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  copy_repository(str(source))  # Builds leave build/ and egg-info.
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'

  seconds = {}

  def run(*args, timeout=300):
    started = time.perf_counter()
    result = subprocess.run([str(a) for a in args], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=timeout)
    step = ' '.join([os.path.basename(str(args[0]))] + [
        str(a)[:30] for a in args[1:4]])
    seconds[step] = round(time.perf_counter() - started, 1)
    return result

  start = time.perf_counter()
  built = run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w',
              tmp_path / 'dist', source)
  assert built.returncode == 0, built.stderr[-3000:]
  wheel, = (tmp_path / 'dist').glob('tf_slwta-*.whl')
  assert run(sys.executable, '-m', 'venv', venv).returncode == 0
  python, script = venv / 'bin' / 'python', venv / 'bin' / 'tf-slwta'
  # Byte-compiling at install costs 13 s and saves more than that in the
  # three TensorFlow imports below.
  installed = run(python, '-m', 'pip', 'install', '-q', wheel, timeout=1200)
  if installed.returncode and any(s in installed.stderr for s in _OFFLINE):
    pytest.skip(f'no package index to install from: {installed.stderr[-500:]}')
  assert installed.returncode == 0, installed.stderr[-3000:]
  install_seconds = time.perf_counter() - start

  shown = run(script, '--help')
  assert shown.returncode == 0, shown.stderr[-3000:]
  assert 'tf-slwta' in shown.stdout and 'Data:' in shown.stdout
  assert run(python, '-m', 'tf_slwta', '-h').stdout == shown.stdout

  checks = run(python, '-c', _CHECKS)
  assert checks.returncode == 0, checks.stderr[-3000:]
  found = json.loads(checks.stdout.splitlines()[-1])
  site = str(venv / 'lib')
  assert found['package'].startswith(site), found  # Not the repository's.
  assert found['quickstart'].startswith(site)
  assert os.path.isfile(found['quickstart'])
  assert (found['license'], found['author']) == ('Apache-2.0',
                                                 'tf_slwta developers')
  assert any(r.startswith('importlib_resources') for r in found['requires'])
  assert found['images'] == [[10, 32, 32, 3], 'uint8']
  assert found['labels'] == [[10], 'int64']

  # A recipe by name, nested flagfile and all, from outside the repository.
  trained = run(script, '--flagfile=smoke.cfg', '--output_dir=run',
                '--epochs=1', '--train_examples=64', '--eval_examples=32',
                '--noevaluate_robustness', '--strategy=one_device')
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert trained.stdout.startswith('train run: synthetic'), trained.stdout
  assert (elsewhere / 'run' / 'results.json').exists()
  recorded = (elsewhere / 'run' / 'config.json').read_bytes()
  evaluated = run(python, '-m', 'tf_slwta', '--mode=evaluate',
                  '--flagfile=flags/attacks/seed.cfg', '--output_dir=run',
                  '--attacks=fgsm')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert evaluated.stdout.startswith('evaluate run: '), evaluated.stdout
  assert 'Robustness on 32 test images' in evaluated.stdout
  assert (elsewhere / 'run' / 'config.json').read_bytes() == recorded
  print(f'\nwheel built and installed with its dependencies in '
        f'{install_seconds:.0f} s; all checks in '
        f'{time.perf_counter() - start:.0f} s: {seconds}')

"""Every model x activation x IBP combination at the quickstart's settings.

Runs the user's command, `python main.py --flagfile=flags/quickstart.cfg`
(SGD at 0.05, momentum 0.9, weight decay 5e-4, batch 128, cosine schedule,
full Fashion-MNIST), with `--model`, `--activation` and `--ibp` changed and
one epoch (`--epochs=1 --noevaluate_robustness`), each in its own process,
and reports whether it finished (the training loop stops with "Training
diverged" when the loss or a weight stops being finite), the mean training
loss and accuracy of the epoch, test accuracy on the 10,000 test images,
and the training speed. The WideResNet is the flags' default, WRN-34-1.

    python benchmarks/stability_grid.py              # writes BENCHMARKS.md
    python benchmarks/stability_grid.py --write=false --models=seed_cnn

Runs go to --runs_dir (a finished run is reused: delete it to retrain).
"""

import itertools
import json
import os
import subprocess
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, 'BENCHMARKS.md')
START, END = '<!-- stability:start -->', '<!-- stability:end -->'

_MODELS = flags.DEFINE_list('models', ['seed_cnn', 'wide_resnet'],
                            'Models to train.')
_EPOCHS = flags.DEFINE_integer('epochs', 1, 'Epochs per run.')
_RUNS = flags.DEFINE_string('runs_dir', 'runs/stability_grid',
                            'Where the runs go.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')


def _train(name, model, activation, ibp):
  """Runs one combination; returns its table row."""
  out = os.path.join(_RUNS.value, name)
  args = [sys.executable, 'main.py', '--flagfile=flags/quickstart.cfg',
          f'--model={model}', f'--activation={activation}',
          f'--ibp={str(ibp).lower()}', f'--epochs={_EPOCHS.value}',
          '--noevaluate_robustness', f'--output_dir={out}']
  results_path = os.path.join(ROOT, out, 'results.json')
  status = 'finished'
  if not (os.path.exists(results_path) and json.load(
      open(results_path)).get('epoch') == _EPOCHS.value):
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          check=False)
    if done.returncode:
      lines = [l for l in done.stderr.splitlines() + done.stdout.splitlines()
               if 'diverged' in l or 'Error' in l]
      status = f'exit {done.returncode}: ' + (
          lines[-1] if lines else done.stderr[-300:]).replace('|', '/')
      print(status, flush=True)
      return (f'| {model} | {activation} | {"yes" if ibp else "no"} | '
              f'{status} | | | | |')
  results = json.load(open(results_path))
  print(name, json.dumps(results), flush=True)
  return (f'| {model} | {activation} | {"yes" if ibp else "no"} | {status} '
          f'| {results["train/loss"]:.3f} | {100 * results["train/accuracy"]:.1f} '
          f'| {100 * results["test/accuracy"]:.2f} '
          f'| {results["train/images_per_sec"]:.0f} |')


def main(argv):
  del argv
  rows = []
  for model, activation, ibp in itertools.product(
      _MODELS.value, ('relu', 'lwta'), (False, True)):
    name = f'{model}_{activation}{"_ibp" if ibp else ""}'
    rows.append(_train(name, model, activation, ibp))
  text = '\n'.join(
      [f'Command: `python benchmarks/stability_grid.py` (each row: `python '
       f'main.py --flagfile=flags/quickstart.cfg --model=M --activation=A '
       f'--ibp=I --epochs={_EPOCHS.value} --noevaluate_robustness`).', '',
       '| model | activation | IBP | run | train loss | train acc (%) | '
       'test acc (%) | images / s |', '|---|---|---|---|---|---|---|---|']
      + rows)
  print(text)
  if _WRITE.value:
    current = open(BENCHMARKS).read()
    if START not in current:
      current += ('\n## Every model x activation x IBP at the quickstart '
                  f'settings\n\n{START}\n{END}\n')
    head, rest = current.split(START, 1)
    tail = rest.split(END, 1)[1]
    with open(BENCHMARKS, 'w') as f:
      f.write(f'{head}{START}\n{text}\n{END}{tail}')


if __name__ == '__main__':
  app.run(main)

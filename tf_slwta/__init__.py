"""tf_slwta: train image classifiers that stay correct under adversarial attack.

Modules: `config` (settings), `cli` (flags), `modes` (what --mode runs),
`run_folder` (a run's files), `data` (pipelines), `models`, `layers`,
`training` (distributed loop), `attacks`, `evaluation`, `export`. See
README.md. `tf_slwta.load_run(folder)` gives a trained run's Keras model,
its decision function and its settings.
"""

__version__ = '0.1.0'


def __getattr__(name):
  # Loaded on first use: importing tf_slwta (as the command line does to
  # check its flags, in 0.35 s) must not load TensorFlow (12 s; main.py).
  if name == 'load_run':
    from tf_slwta.loaded_run import load_run  # pylint: disable=g-import-not-at-top
    return load_run
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

"""`tf_slwta.load_run(folder)`: a trained run as a Keras model, in two lines.

```python
model, decide, config = tf_slwta.load_run('runs/quickstart')
classes = decide(images)  # float32 [B, H, W, C] in [0, 1] -> int64 [B]
```
"""

import dataclasses
from typing import Callable, Iterator

import keras
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta.training import state


@dataclasses.dataclass(frozen=True)
class LoadedRun:
  """A run's model at its newest intact checkpoint.

  Unpacks as `model, decide, config`.

  Attributes:
    model: the Keras model: float32 images `[B, H, W, C]` in [0, 1] ->
      logits `[B, classes]`. Call it with `training=False`; stochastic
      layers still sample at test time.
    decide: the run's decision rule, images -> int64 classes `[B]`: the
      argmax of the softmax averaged over `config.attack.mc_samples` passes,
      the rule the robustness evaluation attacks and scores.
    probabilities: images -> float32 `[B, classes]`, those averaged
      probabilities.
    config: the run's settings (its config.json).
  """
  model: keras.Model
  decide: Callable[[tf.Tensor], tf.Tensor]
  probabilities: Callable[[tf.Tensor], tf.Tensor]
  config: config_lib.ExperimentConfig

  def __iter__(self) -> Iterator:
    return iter((self.model, self.decide, self.config))


def load_run(output_dir: str, mc_samples: int = 0) -> LoadedRun:
  """Opens the run in `output_dir` and restores its newest intact checkpoint.

  Args:
    output_dir: a run folder (with config.json and checkpoints/).
    mc_samples: passes the decision averages; 0 takes the run's own
      (`--mc_samples` of its settings).

  Returns:
    A `LoadedRun` (unpacks as `model, decide, config`).

  Raises:
    FileNotFoundError: the folder has no config.json or no checkpoint.
    run_folder.RunFolderError: config.json is damaged, or the checkpoints
      hold another model.
  """
  saved = run_folder.RunFolder(output_dir).saved_settings()
  if saved is None:
    raise FileNotFoundError(
        f'{output_dir} has no {run_folder.CONFIG_FILE}: it is not a run '
        f'folder (train one with python main.py --output_dir={output_dir}).')
  config = dataclasses.replace(config_lib.ExperimentConfig.from_dict(saved),
                               output_dir=output_dir)
  model = state.restore_model(config, tf.distribute.get_strategy())
  passes = mc_samples or config.attack.mc_samples
  logits_fn = lambda x: model(x, training=False)
  return LoadedRun(
      model=model,
      decide=lambda x: attacks.eot.predict(logits_fn, x, passes),
      probabilities=lambda x: attacks.eot.mean_probabilities(logits_fn, x,
                                                             passes),
      config=config)

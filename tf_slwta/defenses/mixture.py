"""Adversarial training by a random mixture of perturbations (the seed's scheme).

At every training step one branch is drawn inside the compiled step with a
TF random op, with probability proportional to its weight:

  noise  Gaussian noise N(0, noise_sigma^2) added to the batch, clipped
  fgsm   FGSM with the attack settings' fgsm_eps
  pgd    L-inf PGD with pgd_eps, pgd_alpha, pgd_steps (random start)
  cw     Carlini-Wagner L2 with cw_c, cw_kappa, cw_steps, cw_binary_search_steps
  clean  the batch unchanged

The seed draws k uniformly from 0..7: 0 noise, 1 FGSM, 2 PGD, 3 CW, 4-7
clean, i.e. weights noise:1, fgsm:1, pgd:1, cw:1, clean:4
(`config.SEED_MIXTURE`).
Madry-style training is `pgd:1`. Attacks see the model in inference mode
(`training=False`) and are recomputed on the current weights every step.

Every draw (branch, noise, PGD start) takes its seed from the mixture's own
`keras.random.SeedGenerator`, whose state the training loop checkpoints with
the branch counts (`checkpoint_items`), so a resumed run draws what an
uninterrupted one would have. All replicas take the same branch in a step;
each draws its own noise and PGD start.

For stochastic layers their gradient comes from `gradient`
(`--mixture_gradient`): in 'sample' mode an LWTA model is attacked at its
test temperature 0.01, whose input gradient is the 0/1 winner mask with
rare spikes; 'training_temperature' (the default) samples the winners at
their training temperature, the most informative path measured
(BENCHMARKS.md, "Adversarial training of LWTA models"); 'expected' and
'straight_through' are the `surrogate` modes.
"""

from typing import Dict, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.layers import lwta
from tf_slwta.layers import randomness
from tf_slwta.layers import surrogate

BRANCHES = config_lib.MIXTURE_BRANCHES


class AttackMixture:
  """The training loop's perturbation seam for adversarial training.

  Call as `mixture(model, images, labels) -> images` inside the compiled
  training step (on each replica). `counts` holds how often each branch was
  drawn, summed over replicas; `summaries()` gives their shares for
  TensorBoard.

  Args:
    mixture: ((branch, weight), ...) with weights > 0, non-empty.
    attack: attack settings shared with evaluation.
    noise_sigma: std of the Gaussian-noise branch, in [0, 1] pixel units.
    strategy: the training strategy (the counters are made in its scope).
    seed: seed of the mixture's random stream.
    gradient: how the attacks differentiate stochastic layers, one of
      `config.MIXTURE_GRADIENTS`.
  """

  def __init__(self, mixture: Sequence[Tuple[str, float]],
               attack: config_lib.AttackConfig, noise_sigma: float,
               strategy: tf.distribute.Strategy, seed: int = 0,
               gradient: str = 'training_temperature'):
    if not mixture:
      raise ValueError('An AttackMixture needs at least one branch.')
    self.active = [name for name, _ in mixture]
    weights = np.array([w for _, w in mixture], np.float32)
    self.log_weights = tf.constant(np.log(weights / weights.sum()))[None, :]
    self.attack = attack
    self.noise_sigma = float(noise_sigma)
    if gradient not in config_lib.MIXTURE_GRADIENTS:
      raise ValueError(f'gradient={gradient!r} is not one of '
                       f'{", ".join(config_lib.MIXTURE_GRADIENTS)}.')
    self.gradient = gradient
    with strategy.scope():
      self.seed_generator = keras.random.SeedGenerator(seed)
      # float64: a checkpoint restores a SUM-on-read variable as its value
      # divided over the replicas, which an integer would round.
      self.counts = tf.Variable(
          tf.zeros([len(BRANCHES)], tf.float64), trainable=False,
          synchronization=tf.VariableSynchronization.ON_READ,
          aggregation=tf.VariableAggregation.SUM, name='mixture_counts')

  def _branch(self, name: str, model: keras.Model, images, labels):
    cfg = self.attack
    logits_fn = lambda x: model(x, training=False)
    if self.gradient == 'training_temperature':
      served = logits_fn

      def logits_fn(x):
        with lwta.sampling_at_training_temperature():
          return served(x)
    else:
      logits_fn = surrogate.surrogate_logits_fn(logits_fn, self.gradient)
    if name == 'noise':
      noise = tf.random.stateless_normal(
          tf.shape(images), randomness.next_seed(self.seed_generator),
          stddev=self.noise_sigma)
      return tf.clip_by_value(images + noise, 0.0, 1.0)
    if name == 'fgsm':
      return attacks.fgsm(logits_fn, images, labels, cfg.fgsm_eps,
                          eot_samples=cfg.eot_samples)
    if name == 'pgd':
      seed = tf.random.stateless_uniform(
          [], randomness.next_seed(self.seed_generator), 0, 2**31 - 1,
          dtype=tf.int64)
      return attacks.pgd(logits_fn, images, labels, cfg.pgd_eps,
                         cfg.pgd_alpha, cfg.pgd_steps,
                         random_start=cfg.pgd_random_start,
                         eot_samples=cfg.eot_samples, seed=seed)
    if name == 'cw':
      return attacks.carlini_wagner_l2(
          logits_fn, images, labels, c=cfg.cw_c, kappa=cfg.cw_kappa,
          steps=cfg.cw_steps, binary_search_steps=cfg.cw_binary_search_steps,
          learning_rate=cfg.cw_learning_rate, eot_samples=cfg.eot_samples)
    return tf.identity(images)

  def draw(self) -> tf.Tensor:
    """Draws a branch and counts it; int32 index into `self.active`."""
    seed = randomness.next_seed(self.seed_generator, per_replica=False)
    k = tf.random.stateless_categorical(self.log_weights, 1, seed,
                                        dtype=tf.int32)[0, 0]
    index = tf.gather([BRANCHES.index(n) for n in self.active], k)
    self.counts.assign_add(tf.one_hot(index, len(BRANCHES), dtype=tf.float64))
    return k

  def checkpoint_items(self) -> Dict[str, tf.Variable]:
    """What a checkpoint must hold to resume the mixture exactly."""
    return {'mixture_seed': self.seed_generator.state,
            'mixture_counts': self.counts}

  def __call__(self, model: keras.Model, images: tf.Tensor,
               labels: tf.Tensor) -> tf.Tensor:
    """Perturbs one replica's batch `[b, H, W, C]` in [0, 1] by a drawn branch."""
    k = self.draw()
    branches = [lambda name=name: self._branch(name, model, images, labels)
                for name in self.active]
    out = tf.switch_case(k, branches)
    out.set_shape(images.shape)
    return out

  def summaries(self) -> Dict[str, float]:
    """{'mixture/<branch>': share of draws so far in [0, 1]} for active branches."""
    counts = tf.convert_to_tensor(self.counts).numpy()
    total = max(float(counts.sum()), 1.0)
    return {f'mixture/{name}': float(counts[BRANCHES.index(name)]) / total
            for name in self.active}

"""Experiment settings as small frozen dataclasses.

Only `tf_slwta.cli` builds these from absl flags; every library function takes
them (or plain arguments) instead of reading flags, so the library can be used
from a notebook or a test without touching `absl.flags`.
"""

import dataclasses
import json
import math
import os
import re
import unicodedata
from typing import Any, Dict, Optional, Tuple

DATASETS = ('fashion_mnist', 'mnist', 'cifar10', 'synthetic')
MODELS = ('seed_cnn', 'wide_resnet')
ACTIVATIONS = ('relu', 'lwta')
STRATEGIES = ('auto', 'mirrored', 'multi_worker', 'one_device')
LR_SCHEDULES = ('constant', 'cosine', 'step')
MODES = ('train', 'evaluate', 'audit', 'certify', 'grid', 'export', 'predict')
PNI_MODES = ('none', 'activation', 'weight', 'both')
MIXTURE_BRANCHES = ('noise', 'fgsm', 'pgd', 'cw', 'clean')
# How the mixture's attacks differentiate stochastic layers (layers/surrogate.py).
MIXTURE_GRADIENTS = ('sample', 'expected', 'straight_through',
                     'training_temperature')
# The seed draws k uniformly from 0..7: 0 noise, 1 FGSM, 2 PGD, 3 CW, 4-7 clean.
SEED_MIXTURE = (('noise', 1.0), ('fgsm', 1.0), ('pgd', 1.0), ('cw', 1.0),
                ('clean', 4.0))
# (train, test) images of each data set read from files; `synthetic` makes
# as many as asked.
SPLIT_SIZES = {'fashion_mnist': (60000, 10000), 'mnist': (60000, 10000),
               'cifar10': (50000, 10000)}
# The largest L2 distance between two images in [0, 1] of the largest data
# set (32 x 32 x 3 pixels): an L2 budget beyond it constrains nothing.
MAX_L2 = math.sqrt(32 * 32 * 3)
# Ceilings on counts: far beyond any sensible run, they catch typos (an
# extra zero or two) before hours of work.
MAX_STEPS = 100_000
MAX_SAMPLES = 10_000
MAX_BATCH = 1_000_000


def _as_tuple(value):
  """Lists (as JSON gives them) to tuples, recursively."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuple(v) for v in value)
  return value


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(
        f'{name}={value!r} is not supported; choose one of {", ".join(choices)}.')


def _check_at_least(name: str, value: float, low: float) -> None:
  if value < low:
    raise ValueError(f'{name} must be >= {low}, got {value}.')


def _check_at_most(name: str, value: float, high: float, why: str = '') -> None:
  if value > high:
    raise ValueError(f'{name}={value} is over the limit of {high:g}'
                     f'{f" ({why})" if why else ""}; pass a smaller value.')


def _check_finite(settings) -> None:
  """Refuses NaN and infinite numbers in any field of a settings dataclass."""
  for field in dataclasses.fields(settings):
    value = getattr(settings, field.name)
    numbers = [v for v in _flat(value)
               if isinstance(v, float) and not isinstance(v, bool)]
    if any(not math.isfinite(v) for v in numbers):
      raise ValueError(f'{field.name}={value} is not a finite number; pass '
                       f'a finite value.')


def _flat(value):
  if isinstance(value, (list, tuple)):
    for item in value:
      yield from _flat(item)
  else:
    yield value


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the images come from and how they are batched.

  Attributes:
    dataset: one of `DATASETS`.
    data_dir: folder holding Fashion-MNIST's four IDX `.gz` files; searched
      before the Debian location. None to skip.
    tfds_data_dir: TFDS data folder for `mnist` and `cifar10`; None for the
      TFDS default.
    train_examples: use only the first N training examples; 0 for all.
    eval_examples: use only the first N test examples; 0 for all.
    batch_size: global training batch (summed over all replicas), >= 1.
    eval_batch_size: global evaluation batch, >= 1.
    augment: pad-crop and horizontal flip on training images. None means
      "the usual for the data set": on for CIFAR-10, off otherwise.
    download: allow a network download when no local copy is found.
  """
  dataset: str = 'fashion_mnist'
  data_dir: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  train_examples: int = 0
  eval_examples: int = 0
  batch_size: int = 128
  eval_batch_size: int = 500
  augment: Optional[bool] = None
  download: bool = True

  def __post_init__(self):
    _check_choice('dataset', self.dataset, DATASETS)
    _check_at_least('train_examples', self.train_examples, 0)
    _check_at_least('eval_examples', self.eval_examples, 0)
    for name, size in zip(('train_examples', 'eval_examples'),
                          SPLIT_SIZES.get(self.dataset, (None, None))):
      if size is not None and getattr(self, name) > size:
        split = 'training' if name == 'train_examples' else 'test'
        raise ValueError(
            f'{name}={getattr(self, name)}, but {self.dataset} has only '
            f'{size} {split} images; pass at most {size} (0: all).')
    for name in ('batch_size', 'eval_batch_size'):
      _check_at_least(name, getattr(self, name), 1)
      _check_at_most(name, getattr(self, name), MAX_BATCH)

  @property
  def use_augmentation(self) -> bool:
    """Whether training images get pad-crop and flip."""
    if self.augment is None:
      return self.dataset == 'cifar10'
    return self.augment


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which network to build.

  Attributes:
    name: one of `MODELS`.
    activation: one of `ACTIVATIONS`.
    depth: WideResNet depth, 6n + 4 (10, 16, 22, 28, 34, ...).
    widen_factor: WideResNet width multiplier, >= 1.
    seed_cnn_filters: channels of the seed CNN's two convolutions.
    seed_cnn_units: width of the seed CNN's hidden dense layer.
    pni: Parametric Noise Injection in seed_cnn: 'activation' (after pool 1,
      pool 2 and flatten, the seed's three places), 'weight' (every
      convolution and dense kernel), 'both' or 'none'.
    pni_alpha_init: initial noise scale alpha, >= 0.
    pni_channelwise: one alpha per channel instead of one per layer.
    pni_at_test: keep the noise on at test time.
    lwta_competitors: units U per LWTA block, >= 2 (every activation's
      channel count must be a multiple of it).
    lwta_temperature, lwta_test_temperature: Gumbel-softmax temperatures of
      the winners in training and at test, > 0 (sampling stays on at test).
    lwta_deterministic: hard argmax winners instead of sampling.
    ibp: Indian Buffet Process priors on seed_cnn's hidden layers, or on
      every residual 3x3 convolution of wide_resnet.
    ibp_threshold: test-time utilities at or under it prune their block.
    seed_cnn_batch_norm: BatchNorm after seed_cnn's hidden linear maps;
      None: on with LWTA (which diverges without it at the quickstart's
      learning rate), off with ReLU (the seed's network).
  """
  name: str = 'seed_cnn'
  activation: str = 'relu'
  depth: int = 34
  widen_factor: int = 1
  seed_cnn_filters: Tuple[int, int] = (32, 64)
  seed_cnn_units: int = 128
  pni: str = 'none'
  pni_alpha_init: float = 0.25
  pni_channelwise: bool = False
  pni_at_test: bool = True
  lwta_competitors: int = 2
  lwta_temperature: float = 0.67
  lwta_test_temperature: float = 0.01
  lwta_deterministic: bool = False
  ibp: bool = False
  ibp_threshold: float = 0.01
  seed_cnn_batch_norm: Optional[bool] = None

  def __post_init__(self):
    _check_choice('model', self.name, MODELS)
    _check_choice('activation', self.activation, ACTIVATIONS)
    _check_at_least('widen_factor', self.widen_factor, 1)
    _check_at_least('seed_cnn_units', self.seed_cnn_units, 1)
    _check_choice('pni', self.pni, PNI_MODES)
    _check_at_least('pni_alpha_init', self.pni_alpha_init, 0)
    _check_at_least('lwta_competitors', self.lwta_competitors, 2)
    for name in ('lwta_temperature', 'lwta_test_temperature'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}; '
                         f'use --lwta_deterministic for hard winners.')
    if not 0 <= self.ibp_threshold < 1:
      raise ValueError(f'ibp_threshold must be in [0, 1), got '
                       f'{self.ibp_threshold}.')
    if self.activation == 'lwta' or self.ibp:
      widths = (self.seed_cnn_filters + (self.seed_cnn_units,)
                if self.name == 'seed_cnn' else (16 * self.widen_factor,))
      for width in widths:
        if width % self.lwta_competitors:
          raise ValueError(
              f'{width} channels do not split into LWTA blocks of '
              f'lwta_competitors={self.lwta_competitors}; choose widths that '
              f'are multiples of it.')
    _check_finite(self)
    if self.pni in ('weight', 'both') and self.ibp:
      raise ValueError(f'pni={self.pni} and ibp cannot share layers (both '
                       f'replace the kernels); use --pni=activation with '
                       f'--ibp.')
    if self.pni != 'none' and self.name != 'seed_cnn':
      raise ValueError(f'pni={self.pni} is implemented for seed_cnn only, '
                       f'not {self.name}; pass --pni=none.')
    if len(self.seed_cnn_filters) != 2 or min(self.seed_cnn_filters) < 1:
      raise ValueError(
          f'seed_cnn_filters must be two positive channel counts, got '
          f'{self.seed_cnn_filters}; pass e.g. --seed_cnn_filters=32,64.')
    if self.name == 'wide_resnet' and (
        self.depth < 10 or (self.depth - 4) % 6 != 0):
      raise ValueError(
          f'depth={self.depth} is not a valid WideResNet depth: it must be '
          f'6n + 4 with n >= 1 (10, 16, 22, 28, 34, 40, ...).')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How the model is optimized.

  Attributes:
    epochs: passes over the training set, >= 1.
    kl_anneal_epochs: the KL terms' weight grows linearly from 0 to 1 over
      this many epochs (0: full weight from the start).
    learning_rate: peak SGD learning rate, > 0.
    momentum: SGD momentum in [0, 1).
    nesterov: use Nesterov momentum.
    weight_decay: decoupled weight decay (Keras `SGD(weight_decay=...)`),
      >= 0.
    lr_schedule: one of `LR_SCHEDULES`.
    lr_warmup_epochs: linear warm-up length in epochs, >= 0.
    lr_decay_epochs: epochs at which the 'step' schedule multiplies the
      rate by `lr_decay_ratio`.
    lr_decay_ratio: factor of the 'step' schedule, in (0, 1].
    label_smoothing: label smoothing of the cross-entropy, in [0, 1).
    seed: seed for weights, shuffling and augmentation; the same seed
      repeats a CPU run exactly.
    strategy: one of `STRATEGIES`.
    checkpoint_every_steps: also checkpoint every N steps inside an epoch
      (0: only at the end of each epoch).
    keep_checkpoints: how many checkpoints to keep, >= 1.
    log_every_steps: progress-bar and TensorBoard interval, >= 1.
    mixture: adversarial training, ((branch, weight), ...) over
      `MIXTURE_BRANCHES`; one branch is drawn per step with probability
      proportional to its weight. () trains on clean batches.
    noise_sigma: std of the mixture's Gaussian-noise branch, >= 0.
    clean_loss_weight: w in w * CE(clean) + (1 - w) * CE(perturbed), in
      [0, 1); 0 trains on the perturbed batch only.
    lwta_kl_weight: weight >= 0 of the per-example winner KL of the LWTA
      layers in the objective (1: the ELBO's own weight; see
      training/losses.py). Default 1e-4, by measurement (BENCHMARKS.md,
      the LWTA ablation): 1 leaves a network at 46% clean accuracy, 1e-2
      and 1e-3 cost 11 and 6 points against 0, 1/N (1.7e-4 there) costs
      nothing and scored best under attack.
    ibp_kl_weight: weight >= 0 of the global IBP KL divided by the number
      of training examples (1: the ELBO's own weight). Default 30, by
      measurement (BENCHMARKS.md, "IBP: what it takes to prune"): at 1 no
      utility moves far from its start in a CPU-sized run, at 100 the
      utilities fall together and accuracy drops.
    ibp_learning_rate: peak learning rate > 0 of the IBP variational
      parameters' own Adam optimizer (no weight decay; same schedule shape
      as the weights'). Default 0.1: a utility logit must travel from
      ~4.5 to under -4.6 to be pruned, in a few hundred steps here (the
      reference: 0.01 over ~30,000).
    mixture_gradient: how the mixture's attacks differentiate stochastic
      layers, one of `MIXTURE_GRADIENTS` ('sample': the model as served,
      at the LWTA test temperature; 'expected' or 'straight_through': the
      adaptive surrogates of layers/surrogate.py; 'training_temperature':
      LWTA sampling at its training temperature, the default, measured the
      most informative in BENCHMARKS.md).
  """
  epochs: int = 30
  kl_anneal_epochs: float = 0.0
  learning_rate: float = 0.1
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 5e-4
  lr_schedule: str = 'cosine'
  lr_warmup_epochs: float = 0.0
  lr_decay_epochs: Tuple[int, ...] = ()
  lr_decay_ratio: float = 0.1
  label_smoothing: float = 0.0
  seed: int = 42
  strategy: str = 'auto'
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 3
  log_every_steps: int = 50
  mixture: Tuple[Tuple[str, float], ...] = ()
  noise_sigma: float = 0.1
  clean_loss_weight: float = 0.0
  lwta_kl_weight: float = 1e-4
  ibp_kl_weight: float = 30.0
  ibp_learning_rate: float = 0.1
  mixture_gradient: str = 'training_temperature'

  def __post_init__(self):
    _check_finite(self)
    _check_at_least('epochs', self.epochs, 1)
    _check_at_most('epochs', self.epochs, MAX_STEPS)
    _check_at_least('lwta_kl_weight', self.lwta_kl_weight, 0)
    _check_at_least('ibp_kl_weight', self.ibp_kl_weight, 0)
    if not self.ibp_learning_rate > 0:
      raise ValueError(f'ibp_learning_rate must be > 0, got '
                       f'{self.ibp_learning_rate}.')
    _check_choice('mixture_gradient', self.mixture_gradient, MIXTURE_GRADIENTS)
    _check_at_least('kl_anneal_epochs', self.kl_anneal_epochs, 0)
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}.')
    if not 0 <= self.momentum < 1:
      raise ValueError(f'momentum must be in [0, 1), got {self.momentum}.')
    _check_at_least('weight_decay', self.weight_decay, 0)
    _check_choice('lr_schedule', self.lr_schedule, LR_SCHEDULES)
    _check_at_least('lr_warmup_epochs', self.lr_warmup_epochs, 0)
    if not 0 < self.lr_decay_ratio <= 1:
      raise ValueError(
          f'lr_decay_ratio must be in (0, 1], got {self.lr_decay_ratio}.')
    if list(self.lr_decay_epochs) != sorted(set(self.lr_decay_epochs)) or any(
        e < 1 for e in self.lr_decay_epochs):
      raise ValueError(
          f'lr_decay_epochs must be increasing positive epochs, got '
          f'{list(self.lr_decay_epochs)}.')
    if not 0 <= self.label_smoothing < 1:
      raise ValueError(
          f'label_smoothing must be in [0, 1), got {self.label_smoothing}.')
    _check_choice('strategy', self.strategy, STRATEGIES)
    _check_at_least('checkpoint_every_steps', self.checkpoint_every_steps, 0)
    _check_at_least('keep_checkpoints', self.keep_checkpoints, 1)
    _check_at_least('log_every_steps', self.log_every_steps, 1)
    names = [name for name, _ in self.mixture]
    for name, weight in self.mixture:
      _check_choice('mixture', name, MIXTURE_BRANCHES)
      if not weight > 0:
        raise ValueError(f'mixture weight of {name} must be > 0, got {weight}.')
    if len(set(names)) != len(names):
      raise ValueError(f'mixture names a branch twice: {names}.')
    _check_at_least('noise_sigma', self.noise_sigma, 0)
    _check_at_most('noise_sigma', self.noise_sigma, 1.0,
                   'pixels are in [0, 1]')
    if not 0 <= self.clean_loss_weight < 1:
      raise ValueError(f'clean_loss_weight must be in [0, 1), got '
                       f'{self.clean_loss_weight}.')


ATTACKS = ('fgsm', 'pgd_linf', 'pgd_l2', 'cw', 'apgd_ce', 'apgd_dlr', 'apgd_t',
           'apgd_margin', 'square', 'transfer')
# Attacks that run once per gradient mode (Square follows a mode's
# surrogate's margin instead of its gradient).
GRADIENT_ATTACKS = ('fgsm', 'pgd_linf', 'pgd_l2', 'cw', 'apgd_ce', 'apgd_dlr',
                    'apgd_t', 'apgd_margin')
COMBINED_MODES = ('worst_case', 'sequential')
# How gradient attacks differentiate a stochastic model (layers/surrogate.py).
GRADIENT_MODES = ('sample', 'expected', 'straight_through',
                  'training_temperature', 'soft_temperature')
AA_NORMS = ('inf', '2')


@dataclasses.dataclass(frozen=True)
class AttackConfig:
  """Attacks run by robustness evaluation (and, later, adversarial training).

  Images live in [clip_min, clip_max] = [0, 1]. Defaults are the seed's
  settings (flags/attacks/seed.cfg).

  Attributes:
    attacks: which attacks to run, a subset of `ATTACKS`, in order.
    combined: 'worst_case' (robust only if every attack fails) or
      'sequential' (each attack starts from the previous one's output, as
      the seed's "all attacks combined" figure; not bounded by eps).
    fgsm_eps: L-inf budget of FGSM, >= 0.
    pgd_eps, pgd_alpha, pgd_steps: L-inf PGD budget, step and iterations.
    pgd_l2_eps, pgd_l2_alpha: L2 PGD budget and step (same steps).
    pgd_restarts: random restarts per PGD attack (the worst case is kept).
    pgd_random_start: start PGD at a random point of the ball.
    cw_c: initial constant c of Carlini-Wagner L2, > 0.
    cw_kappa: confidence margin kappa, >= 0.
    cw_steps: Adam iterations per binary-search step, >= 1.
    cw_binary_search_steps: searches over c per example, >= 1.
    cw_learning_rate: Adam step size on the tanh-space offset, > 0.
    eot_samples: forward passes averaged per attack gradient (expectation
      over transformation), for stochastic models; >= 1.
    mc_samples: forward passes whose mean probabilities make the model's
      decision, both when attacking and when scoring; >= 1.
    seed: seed of the attacks' random starts.
    aa_norm, aa_eps: the threat model of the AutoAttack-style attacks
      (apgd_ce, apgd_dlr, apgd_t, square, transfer): 'inf' or '2', and the
      radius >= 0.
    apgd_steps: APGD iterations per run (100 in AutoAttack), >= 1.
    apgd_restarts: APGD-CE / APGD-DLR random restarts, >= 1.
    apgd_target_classes: APGD-T target classes, >= 1 (9 in AutoAttack).
    square_queries: Square attack iterations, >= 1 (5000 in AutoAttack).
    square_p_init: Square's initial window share, in (0, 1] (0.8).
    square_samples: passes averaged per margin estimate when Square searches
      a stochastic model, >= 0; 0 takes mc_samples. Fewer passes make each
      query cheaper and noisier (the search races challengers on fresh
      estimates): on the noisy toy of `benchmarks/square_noisy_toy.py`
      (300 queries, decisions of 10 passes, optimum 45.1%) Square left
      59.8% with 10 passes per estimate, 61.3% with 5 at half the cost;
      queries count more than passes: 1 pass x 600 queries left 60.2%,
      1 x 1,000 54.5%, 1 x 1,500 (the passes of 5 x 300) 51.4%.
    gradient_modes: how gradient attacks differentiate a stochastic model,
      a subset of `GRADIENT_MODES`, or ('auto',): every mode for a model
      whose passes differ, 'sample' alone for a deterministic one. Each mode
      runs every gradient attack; each image keeps its worst case.
    randomized_mode_attacks: the gradient attacks of `attacks` that also
      run in the gradient modes with randomness (EOT over passes: 'sample',
      'straight_through', the temperatures); the others run only in the
      modes without it (one pass per gradient), or in the first mode when
      every mode has randomness. () runs every one in every mode. In the
      audit's cascade on the PNI row and the LWTA recipe, APGD-DLR broke
      no image in a randomized mode that APGD-CE and APGD-margin had left
      in it (BENCHMARKS.md).
    transfer_from: run folder of the source model of the 'transfer' attack
      ('' for none): APGD-CE with the aa_* budget on the source, scored on
      the attacked model.
    decision_repeats: fresh decisions per image that score every attack on
      a stochastic model (their mean is the accuracy, their spread its
      Monte Carlo standard error), >= 1; one for deterministic models.
    cascade: run each attack only on the images no earlier attack broke
      (cheapest and strongest first; AutoAttack's economy): the same worst
      case for much less, but no per-attack rows (worst_case only).
    cascade_lead_steps: APGD iterations of the attacks in the cascade's
      lead mode (the cheapest gradient mode, that of its first attack,
      which meets every image), >= 0; 0 takes apgd_steps. On the PNI row
      the audit's 50-step lead broke 815 of 920 images where AutoAttack's
      100 steps broke 826, and the later stages did not make up the
      difference (BENCHMARKS.md).
    cascade_focus: share in [0, 1] of the images a stochastic model's
      cascade leaves standing after its iterative stage that AutoAttack's
      randomized APGD-CE then meets in full, with cascade_focus_eot passes
      per gradient and cascade_focus_steps steps, in every gradient mode
      with randomness, on the images nearest the decision boundary (fewest
      right decisions, then the lowest margin of the worst point found so
      far; `scoring.nearest_first`). 0: no such stage. On the PNI row
      the images that EOT 20 x 100 broke after the lead mode were among
      the 3 nearest the boundary of 86, seed after seed (BENCHMARKS.md).
    cascade_focus_eot: EOT passes per gradient of that stage, >= 1.
    cascade_focus_steps: APGD iterations of that stage, >= 1.
    decision_block: a stochastic model's decision draws its passes in
      blocks of this many and stops once its answer is settled (see
      `decision_z`), up to mc_samples passes; 0 always draws mc_samples.
    decision_z: a decision is settled when the lead of its top class over
      the runner-up is this many standard errors from being overturned by
      the passes left (3.5: it differed from the full decision for 0.2-0.6%
      of images on toys; `attacks.eot.settled_probabilities`).
    passes_per_call: Monte Carlo and EOT passes of a batch run as one call
      on the batch tiled this many times (`attacks.eot.BatchedPasses`), >= 1.
      1 on CPUs, where it measured no faster
      (`benchmarks/batched_passes.py`); on a GPU that a batch leaves idle,
      raise it as memory allows.
    max_call_images: the most images one batched call may hold (the memory
      cap of passes_per_call), >= 1.
  """
  attacks: Tuple[str, ...] = ATTACKS[:4]
  combined: str = 'worst_case'
  fgsm_eps: float = 0.3
  pgd_eps: float = 0.3
  pgd_alpha: float = 0.01
  pgd_steps: int = 3
  pgd_l2_eps: float = 1.5
  pgd_l2_alpha: float = 0.1
  pgd_restarts: int = 1
  pgd_random_start: bool = True
  cw_c: float = 1e-4
  cw_kappa: float = 0.01
  cw_steps: int = 3
  cw_binary_search_steps: int = 1
  cw_learning_rate: float = 0.01
  eot_samples: int = 1
  mc_samples: int = 1
  seed: int = 0
  aa_norm: str = 'inf'
  aa_eps: float = 0.1
  apgd_steps: int = 100
  apgd_restarts: int = 1
  apgd_target_classes: int = 9
  square_queries: int = 5000
  square_p_init: float = 0.8
  square_samples: int = 0
  gradient_modes: Tuple[str, ...] = ('auto',)
  randomized_mode_attacks: Tuple[str, ...] = ()
  transfer_from: str = ''
  decision_repeats: int = 5
  cascade: bool = False
  cascade_lead_steps: int = 0
  cascade_focus: float = 0.0
  cascade_focus_eot: int = 20
  cascade_focus_steps: int = 100
  decision_block: int = 2
  decision_z: float = 3.5
  passes_per_call: int = 1
  max_call_images: int = 8192

  def threat_model(self, attack: str) -> str:
    """The threat model `attack` works in: the norm and radius of the
    perturbations it may make ('Linf 0.3', 'L2 1.5'; 'L2, minimal' for CW,
    which has no radius; 'none' for 'natural', the clean images)."""
    own = {'natural': 'none', 'fgsm': f'Linf {self.fgsm_eps:g}',
           'pgd_linf': f'Linf {self.pgd_eps:g}',
           'pgd_l2': f'L2 {self.pgd_l2_eps:g}', 'cw': 'L2, minimal'}
    return own.get(attack, f'L{"inf" if self.aa_norm == "inf" else "2"} '
                           f'{self.aa_eps:g}')

  def __post_init__(self):
    for name in self.attacks:
      _check_choice('attacks', name, ATTACKS)
    for name in self.randomized_mode_attacks:
      _check_choice('randomized_mode_attacks', name, GRADIENT_ATTACKS)
    _check_choice('aa_norm', self.aa_norm, AA_NORMS)
    _check_at_least('aa_eps', self.aa_eps, 0)
    for name in ('apgd_steps', 'apgd_restarts', 'apgd_target_classes',
                 'square_queries', 'decision_repeats', 'passes_per_call',
                 'max_call_images', 'cascade_focus_eot',
                 'cascade_focus_steps'):
      _check_at_least(name, getattr(self, name), 1)
    _check_at_least('decision_block', self.decision_block, 0)
    _check_at_least('square_samples', self.square_samples, 0)
    _check_at_least('cascade_lead_steps', self.cascade_lead_steps, 0)
    if not 0 <= self.cascade_focus <= 1:
      raise ValueError(f'cascade_focus must be a share in [0, 1] of the '
                       f'images still standing, got {self.cascade_focus}.')
    _check_at_least('decision_z', self.decision_z, 0)
    if not 0 < self.square_p_init <= 1:
      raise ValueError(f'square_p_init must be in (0, 1], got '
                       f'{self.square_p_init}.')
    if tuple(self.gradient_modes) != ('auto',):
      if not self.gradient_modes:
        raise ValueError('gradient_modes is empty; use auto or some of '
                         f'{", ".join(GRADIENT_MODES)}.')
      for mode in self.gradient_modes:
        _check_choice('gradient_modes', mode, GRADIENT_MODES)
    if 'transfer' in self.attacks and not self.transfer_from:
      raise ValueError('attacks includes transfer but transfer_from is '
                       'empty; pass --transfer_from=RUN_DIR, the run folder '
                       'of the source model, e.g. the recipe\'s ReLU twin '
                       'trained by python main.py --flagfile=RECIPE.cfg '
                       '--activation=relu --noibp --output_dir=RUN_DIR.')
    if len(set(self.attacks)) != len(self.attacks):
      raise ValueError(f'attacks lists one twice: {",".join(self.attacks)}.')
    _check_choice('combined', self.combined, COMBINED_MODES)
    _check_finite(self)
    for name in ('fgsm_eps', 'pgd_eps', 'pgd_l2_eps', 'cw_kappa'):
      _check_at_least(name, getattr(self, name), 0)
    for name in ('fgsm_eps', 'pgd_eps', 'pgd_alpha'):
      _check_at_most(name, getattr(self, name), 1.0,
                     'an L-inf budget beyond the pixel range [0, 1]')
    for name in ('pgd_l2_eps', 'pgd_l2_alpha'):
      _check_at_most(name, getattr(self, name), round(MAX_L2, 2),
                     'the L2 distance of two 32x32x3 images in [0, 1]')
    for name in ('pgd_alpha', 'pgd_l2_alpha', 'cw_c', 'cw_learning_rate'):
      if not getattr(self, name) > 0:
        raise ValueError(f'{name} must be > 0, got {getattr(self, name)}.')
    if self.pgd_alpha > self.pgd_eps > 0:
      raise ValueError(f'pgd_alpha={self.pgd_alpha} is larger than '
                       f'pgd_eps={self.pgd_eps}; use a step <= eps.')
    if self.pgd_l2_alpha > self.pgd_l2_eps > 0:
      raise ValueError(f'pgd_l2_alpha={self.pgd_l2_alpha} is larger than '
                       f'pgd_l2_eps={self.pgd_l2_eps}; use a step <= eps.')
    for name in ('pgd_steps', 'pgd_restarts', 'cw_steps',
                 'cw_binary_search_steps', 'eot_samples', 'mc_samples'):
      _check_at_least(name, getattr(self, name), 1)
    for name in ('pgd_steps', 'cw_steps'):
      _check_at_most(name, getattr(self, name), MAX_STEPS)
    for name in ('pgd_restarts', 'cw_binary_search_steps', 'eot_samples',
                 'mc_samples', 'apgd_restarts', 'apgd_target_classes',
                 'decision_repeats'):
      _check_at_most(name, getattr(self, name), MAX_SAMPLES)
    for name in ('apgd_steps', 'square_queries'):
      _check_at_most(name, getattr(self, name), MAX_STEPS)
    if self.aa_norm == 'inf':
      _check_at_most('aa_eps', self.aa_eps, 1.0,
                     'an L-inf budget beyond the pixel range [0, 1]')
    else:
      _check_at_most('aa_eps', self.aa_eps, round(MAX_L2, 2),
                     'the L2 distance of two 32x32x3 images in [0, 1]')


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """The gradient-masking checklist of --mode=audit (Athalye et al., 2018;
  Carlini et al., 2019), around the attack settings' aa_* threat model.

  Attributes:
    sweep_examples: images of the eps and steps sweeps (the first ones of
      the audited images), >= 1.
    eps_multiples: increasing multiples of aa_eps for the eps sweep; the
      largest must take accuracy to about 0 (L-inf radii are capped at 1).
    sweep_steps: increasing APGD-CE iteration counts of the steps sweep.
    noise_draws: random points of the eps sphere per image in the
      random-noise floor, >= 1.
    eps_spot: the eps sweep runs as a cascade over radii: at each radius
      past the first only the images still standing are attacked, plus
      this many of those a smaller radius broke, attacked afresh as a spot
      check (eps_monotone); >= 0, 0 attacks every image at every radius.
    tolerance: how far in [0, 1] one number may beat another it must not
      beat before a check fails (at least twice their Monte Carlo standard
      errors are allowed too).
    chance_share: the accuracy at the largest eps that counts as "about 0",
      as a share of chance (1 / classes): 0.5 is 5% for 10 classes, 0.5%
      for 100.
    escalate: when a check says the gradients are masked, attack the
      images that survived with what does not need the model's gradients
      (a larger Square, transfer from a network distilled from the model),
      round after round, until the worst case stops moving.
    escalation_rounds: at most this many rounds, >= 1.
    escalation_queries: Square's queries per restart in escalation (0:
      ten times --square_queries, at least 1,000).
    distill_examples: without a transfer source, the table's transfer
      attack comes from a small network distilled from the model's own
      answers around the first this many images (0: no transfer row).
    distill_pool: training images (never the audited ones; the model
      labels them, no true label is used) the distilled source also learns
      from, when the caller gives them (`--mode=audit` gives the run's
      first training images, at most --train_examples), >= 0; 0: only
      the audited images and random points of their eps balls. Transfer from
      a source that saw more of the model's answers is stronger, and
      cheaper to train: APGD on the source (200 images, eps 0.1) leaves
      42.0% of the masking zoo's plain CNN with 10,000 pool images (4
      epochs, 21 s) where 500 images and 8 random points around each leave
      53.0% (20 epochs, 47 s); quantized 61.0 vs 69.5%, quantized +
      saturated 65.0 vs 75.0%, purified 38.0 vs 43.5%
      (`benchmarks/distill_epochs.py --pool=10000 --epochs=4`).
  """
  sweep_examples: int = 200
  eps_multiples: Tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
  sweep_steps: Tuple[int, ...] = (10, 25, 50, 100)
  noise_draws: int = 20
  eps_spot: int = 16
  tolerance: float = 0.02
  chance_share: float = 0.5
  escalate: bool = True
  escalation_rounds: int = 3
  escalation_queries: int = 0
  distill_examples: int = 500
  distill_pool: int = 10000

  def __post_init__(self):
    _check_finite(self)
    _check_at_least('audit_sweep_examples', self.sweep_examples, 1)
    _check_at_least('audit_noise_draws', self.noise_draws, 1)
    _check_at_least('audit_eps_spot', self.eps_spot, 0)
    _check_at_least('audit_escalation_rounds', self.escalation_rounds, 1)
    _check_at_least('audit_distill_examples', self.distill_examples, 0)
    _check_at_least('audit_distill_pool', self.distill_pool, 0)
    _check_at_least('audit_escalation_queries', self.escalation_queries, 0)
    for name, values in (('audit_eps_multiples', self.eps_multiples),
                         ('audit_steps', self.sweep_steps)):
      if (not values or list(values) != sorted(set(values))
          or min(values) <= 0):
        raise ValueError(f'{name} must be increasing positive numbers, got '
                         f'{list(values)}.')
    for name in ('tolerance', 'chance_share'):
      if not 0 <= getattr(self, name) < 1:
        raise ValueError(f'audit_{name} must be in [0, 1), got '
                         f'{getattr(self, name)}.')


@dataclasses.dataclass(frozen=True)
class CertifyConfig:
  """Randomized smoothing (Cohen et al., 2019) for --mode=certify.

  Attributes:
    sigma: std of the Gaussian noise in [0, 1] pixel units, > 0.
    n0: samples that select the class in CERTIFY, >= 1.
    n: samples that estimate its probability (CERTIFY) or vote (PREDICT).
    alpha: failure probability of the statistical tests, in (0, 1).
    batch_size: noisy copies classified per forward pass, >= 1.
    radii: increasing L2 radii >= 0 at which certified accuracy is reported.
  """
  sigma: float = 0.25
  n0: int = 100
  n: int = 1000
  alpha: float = 0.001
  batch_size: int = 500
  radii: Tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)

  def __post_init__(self):
    _check_finite(self)
    if not self.sigma > 0:
      raise ValueError(f'certify_sigma must be > 0, got {self.sigma}.')
    for name in ('n0', 'n', 'batch_size'):
      _check_at_least(f'certify_{name}', getattr(self, name), 1)
      _check_at_most(f'certify_{name}', getattr(self, name), MAX_BATCH * 10)
    if not 0 < self.alpha < 1:
      raise ValueError(f'certify_alpha must be in (0, 1), got {self.alpha}.')
    if any(r < 0 for r in self.radii) or list(self.radii) != sorted(self.radii):
      raise ValueError(f'certify_radii must be increasing and >= 0, got '
                       f'{list(self.radii)}.')


# TF Serving's REST API matches the model name in the raw request path
# (/v1/models/NAME:predict, NAME = [^/:]+) and never percent-decodes it, so a
# name a URL must encode (a space, an accent, %, ?, #) reaches no model over
# REST; keep names URL- and file-safe.
_MODEL_NAME_CHARS = frozenset(
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-')
SERVING_PROTOCOLS = ('rest', 'grpc')
EXPORT_SAMPLING = ('auto', 'batched', 'per_example')


def usable_model_name(text: str) -> str:
  """A TF Serving model name close to `text` (e.g. 'my run' -> 'my_run').

  Accents are dropped ('modèle' -> 'modele'), every other run of characters
  outside letters, digits, '_', '.' and '-' becomes '_'; 'model' when
  nothing is left.
  """
  plain = unicodedata.normalize('NFKD', text).encode('ascii', 'ignore')
  name = re.sub(r'[^A-Za-z0-9_.-]+', '_', plain.decode('ascii')).strip('._')
  return name or 'model'


def check_model_name(name: str) -> None:
  """Raises ValueError unless `name` is a usable TF Serving model name."""
  if not name or set(name) - _MODEL_NAME_CHARS or name.startswith('.'):
    raise ValueError(
        f'model name {name!r} is not usable by TF Serving: use letters, '
        f'digits, "_", "." and "-" only, not starting with "." (e.g. '
        f'--export_name={usable_model_name(name)}).')


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """Where --mode=export writes the SavedModel for TensorFlow Serving.

  The model goes to `<export_dir>/<name>/<version>/`, the layout TF Serving
  watches; `<export_dir>/models.config` lists every model there.

  Attributes:
    export_dir: the folder TF Serving serves (mounted at /models in Docker).
    name: the served model's name; '' takes the last part of output_dir.
    version: version number >= 1; 0 takes one more than the newest
      existing version (1 for a new model). An existing version is never
      overwritten.
    warmup_batch_sizes: batch sizes of the warm-up requests written to
      `assets.extra/tf_serving_warmup_requests`, each >= 1.
    sampling: how a stochastic model's passes are run, one of
      `EXPORT_SAMPLING`: 'auto' (one example at a time only for layers that
      share a draw across a batch, so no answer depends on its batch mates),
      'batched' (faster; such draws are shared within a request) or
      'per_example'.
  """
  export_dir: str = 'saved_models'
  name: str = ''
  version: int = 0
  warmup_batch_sizes: Tuple[int, ...] = (1, 8)
  sampling: str = 'auto'

  def __post_init__(self):
    if not self.export_dir:
      raise ValueError('export_dir must not be empty; pass --export_dir=DIR.')
    if self.name:
      check_model_name(self.name)
    _check_at_least('export_version', self.version, 0)
    if not self.warmup_batch_sizes or min(self.warmup_batch_sizes) < 1:
      raise ValueError(f'warmup_batch_sizes must be positive, got '
                       f'{list(self.warmup_batch_sizes)}.')
    _check_choice('export_sampling', self.sampling, EXPORT_SAMPLING)

  def model_name(self, output_dir: str) -> str:
    """`name`, or the last part of `output_dir` when `name` is ''.

    Raises:
      ValueError: that part is not a usable model name (a space, an accent:
        TF Serving's REST API could not reach it); the message gives the
        --export_name to pass.
    """
    if self.name:
      check_model_name(self.name)
      return self.name
    name = os.path.basename(os.path.normpath(output_dir))
    try:
      check_model_name(name)
    except ValueError as e:
      raise ValueError(
          f'the model would be named {name!r} after --output_dir, and TF '
          f'Serving cannot serve that name over REST (letters, digits, "_", '
          f'"." and "-" only); pass --export_name={usable_model_name(name)} '
          f'to --mode=export and --mode=predict.') from e
    return name


def check_server(server: str) -> None:
  """Raises ValueError unless `server` is HOST[:PORT] or http(s)://HOST[:PORT]."""
  rest = server.split('://', 1)[1] if '://' in server else server
  scheme_ok = '://' not in server or server.split('://')[0] in ('http',
                                                                'https')
  host, _, port = rest.rstrip('/').rpartition(':') if ':' in rest else (
      rest.rstrip('/'), '', '')
  port_ok = not port or (port.isdigit() and 0 < int(port) < 65536)
  host_ok = bool(host) and not set(host) - _HOST_CHARS
  if not (scheme_ok and port_ok and host_ok):
    raise ValueError(f'server={server!r} is not HOST:PORT; pass e.g. '
                     f'--server=localhost:8501 (REST) or localhost:8500 '
                     f'(gRPC).')


_HOST_CHARS = frozenset(
    'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:')


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """How --mode=predict reaches a running TensorFlow Serving.

  Attributes:
    server: 'host:port' (or 'http://host:port' for REST); TF Serving's
      defaults are 8501 for REST and 8500 for gRPC.
    protocol: one of `SERVING_PROTOCOLS`.
    model_name: the served model; '' takes the export's default name.
    version: a model version to ask for; 0 lets the server pick its latest.
    timeout: seconds to wait for one request, > 0.
    images: image files (PNG, JPEG, GIF, BMP) to classify; empty classifies
      the test split of the data set instead.
    batch_size: images per request, >= 1.
  """
  server: str = 'localhost:8501'
  protocol: str = 'rest'
  model_name: str = ''
  version: int = 0
  timeout: float = 30.0
  images: Tuple[str, ...] = ()
  batch_size: int = 100

  def __post_init__(self):
    check_server(self.server)
    _check_finite(self)
    _check_choice('serving_protocol', self.protocol, SERVING_PROTOCOLS)
    if self.model_name:
      check_model_name(self.model_name)
    _check_at_least('export_version', self.version, 0)
    if not self.timeout > 0:
      raise ValueError(f'serving_timeout must be > 0 seconds, got '
                       f'{self.timeout}.')
    _check_at_least('serving_batch_size', self.batch_size, 1)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """One run: what to do, on what, with what, and where to write.

  Attributes:
    mode: one of `MODES`.
    output_dir: checkpoints, TensorBoard logs, metrics.jsonl and results.
    evaluate_robustness: after --mode=train, also run the attacks of
      `attack` on the test examples and write the robustness table.
    data, model, train, attack, audit, certify, export, serve: the parts
      above.
    grid: flagfiles of the runs --mode=grid trains and evaluates.
    grid_overrides: a flagfile applied after each grid row's own (e.g. a
      shorter budget), or None.
  """
  mode: str = 'train'
  output_dir: str = 'runs/quickstart'
  evaluate_robustness: bool = False
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
  audit: AuditConfig = dataclasses.field(default_factory=AuditConfig)
  certify: CertifyConfig = dataclasses.field(default_factory=CertifyConfig)
  export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
  serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
  grid: Tuple[str, ...] = ()
  grid_overrides: Optional[str] = None

  def __post_init__(self):
    _check_choice('mode', self.mode, MODES)
    if not self.output_dir:
      raise ValueError('output_dir must not be empty; pass --output_dir=DIR.')

  def to_dict(self) -> Dict[str, Any]:
    """The settings as JSON-ready nested dicts."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, saved: Dict[str, Any]) -> 'ExperimentConfig':
    """Rebuilds settings from `to_dict()` output (e.g. a run's config.json)."""
    sections = {'data': DataConfig, 'model': ModelConfig,
                'train': TrainConfig, 'attack': AttackConfig,
                'audit': AuditConfig, 'certify': CertifyConfig,
                'export': ExportConfig,
                'serve': ServeConfig}
    tuples = lambda d: {k: _as_tuple(v) for k, v in d.items()}
    top = tuples({k: v for k, v in saved.items() if k not in sections})
    return cls(**top, **{name: kind(**tuples(saved.get(name, {})))
                         for name, kind in sections.items()})

  def to_json(self) -> str:
    """The settings as indented JSON (written beside each run)."""
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Settings that change what a checkpoint means. Resuming a run whose
# output_dir holds a checkpoint made with other values of these is refused;
# everything else (epochs, logging, evaluation size, strategy) may change.
RUN_IDENTITY_FIELDS = {
    'data': ('dataset', 'train_examples', 'batch_size', 'augment'),
    'model': ('name', 'activation', 'depth', 'widen_factor',
              'seed_cnn_filters', 'seed_cnn_units', 'pni', 'pni_alpha_init',
              'pni_channelwise', 'lwta_competitors', 'ibp',
              'seed_cnn_batch_norm'),
    'train': ('seed', 'learning_rate', 'momentum', 'nesterov', 'weight_decay',
              'lr_schedule', 'lr_warmup_epochs', 'lr_decay_epochs',
              'lr_decay_ratio', 'label_smoothing', 'mixture', 'noise_sigma',
              'clean_loss_weight', 'kl_anneal_epochs', 'lwta_kl_weight',
              'ibp_kl_weight', 'ibp_learning_rate', 'mixture_gradient'),
}


# What a trained model's checkpoint needs to be used (evaluate, certify,
# export), whatever trained it.
MODEL_IDENTITY = ('data.dataset',) + tuple(
    f'model.{name}' for name in RUN_IDENTITY_FIELDS['model'])


def identity_mismatches(saved: Dict[str, Any],
                        current: ExperimentConfig) -> Dict[str, Tuple[Any, Any]]:
  """Compares a saved run's settings (`to_dict()` output) with `current`.

  Args:
    saved: the dict written by an earlier run into its output_dir.
    current: this run's settings.

  Returns:
    {'section.field': (saved value, current value)} for every identity field
    that differs; empty when the checkpoint may be resumed.
  """
  now = current.to_dict()
  # A field added after the run was made counts as its default there.
  defaults = ExperimentConfig().to_dict()
  diffs = {}
  for section, names in RUN_IDENTITY_FIELDS.items():
    for name in names:
      old = saved.get(section, {}).get(name, defaults[section][name])
      new = now[section][name]
      old, new = _as_tuple(old), _as_tuple(new)
      if old != new:
        diffs[f'{section}.{name}'] = (old, new)
  return diffs


"""Robustness evaluation: natural accuracy and accuracy under every attack.

All scores use one decision rule, the argmax of the softmax averaged over
`mc_samples` passes, for clean images, for adversarial images, and inside
the attacks when they judge success. For deterministic models set
mc_samples = eot_samples = 1.

An image counts as robust if the decision is right on the worst image the
attacks found in its eps ball, the clean image included: for a deterministic
model, right on the clean image and on the attacked one. A stochastic model
is scored so that luck does not count twice:
  * every gradient attack runs once per gradient mode (EOT over samples,
    the layers' expectation, straight-through; `attack_suite`);
  * each candidate (the clean image and every mode's output) is judged by
    `decision_repeats` decisions; the one judged worst for the model is then
    scored by as many fresh decisions. The accuracy is the mean over those
    repeats; its Monte Carlo standard error is their spread, and the image
    standard error sqrt(p (1 - p) / N) says how far N images are from the
    whole test set;
  * the combined worst case picks, per image, among the clean image and
    each attack's pick, judged by the fresh decisions that scored them, and
    scores its pick with fresh decisions again, so an image broken only by
    the noise of one of many decisions is not counted as broken.
"""

import csv
import dataclasses
import io
import json
import os
import sys
import textwrap
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import progress as progress_lib
from tf_slwta.attacks import reporting
from tf_slwta.evaluation import attack_suite
from tf_slwta.evaluation import records as records_lib
from tf_slwta.evaluation import scoring

COLUMNS = ('attack', 'threat', 'settings', 'accuracy', 'mc_se', 'image_se',
           'success_rate', 'median_l2', 'max_linf', 'examples')
FILE_STEM = 'robustness'
# Recorded in each report; a report scored another way is never reused.
SCORING = ('robust = right on the worst of the clean image and every attack '
           'output (all gradient modes), scored by decision_repeats fresh '
           'decisions; randomness reseeded per batch and attack')
# Beside robustness.json: the examples the figures draw (see `Examples`).
EXAMPLES_FILE = 'figures_data.npz'

attack_settings = attack_suite.attack_settings


@dataclasses.dataclass
class Examples:
  """What the figures need from one evaluation, filled in while it runs.

  Pass an empty one to `evaluate_robustness(..., examples=...)`; it records
  outputs the evaluation computes anyway (no attack runs twice, no extra
  forward pass). Names are 'natural', each attack, and 'combined'.

  Attributes:
    keep: how many of the first test examples to keep whole, >= 0.
    images: float32 `[n, H, W, C]` in [0, 1], the first n = min(keep, N)
      clean images.
    labels: int64 `[n]`.
    adversarial: {attack or 'combined': float32 `[n, H, W, C]` in [0, 1]};
      the candidate the row scored: the one with the fewest right decisions
      (ties: the lowest true-class margin) among the attack's images and
      the clean image (`scoring.Candidates.worst`).
    probabilities: {name: float32 `[n, K]`}, the mean softmax over
      `mc_samples` passes that made the decision (rows sum to 1).
    robust: {name: bool `[n]`}, the verdict the table counted: the picked
      image is right in at least half of the fresh repeated decisions.
    true_class: {name: float32 `[N]` in [0, 1]}, the mean probability of the
      true class for every evaluated example (for a worst-case combination,
      that of the image it picked).
  """
  keep: int = 16
  images: Optional[np.ndarray] = None
  labels: Optional[np.ndarray] = None
  adversarial: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  probabilities: Dict[str, np.ndarray] = dataclasses.field(
      default_factory=dict)
  robust: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  true_class: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> List[str]:
    """'natural', the attacks and 'combined', in the table's order."""
    return list(self.true_class)

  def add(self, name: str, attacked, labels, probs: np.ndarray,
          robust: np.ndarray) -> None:
    """Records one batch of `name`; 'natural' first in every batch.

    Args:
      name: 'natural', an attack, or 'combined'.
      attacked: float32 `[B, H, W, C]`, the images scored (the clean ones
        for 'natural').
      labels: int `[B]` (tensor or array).
      probs: float32 `[B, K]`, their decision probabilities.
      robust: bool `[B]`, the verdict the table counted.
    """
    labels = np.asarray(labels)
    true = probs[np.arange(len(labels)), labels].astype(np.float32)
    self.true_class[name] = _append(self.true_class.get(name), true)
    kept = 0 if self.labels is None else len(self.labels)
    if name == 'natural':
      take = min(self.keep - kept, len(labels))
      if take > 0:
        self.images = _append(self.images, np.asarray(attacked)[:take])
        self.labels = _append(self.labels, labels[:take])
    else:  # As many as 'natural' kept so far.
      take = kept - len(self.robust.get(name, ()))
      if take > 0:
        self.adversarial[name] = _append(self.adversarial.get(name),
                                         np.asarray(attacked)[:take])
    if take > 0:
      self.probabilities[name] = _append(self.probabilities.get(name),
                                         probs[:take].astype(np.float32))
      self.robust[name] = _append(self.robust.get(name), robust[:take])

  def save(self, output_dir: str) -> str:
    """Writes the record as `<output_dir>/figures_data.npz`; returns it.

    The npz holds 'names' (str `[A]`), 'images' float32 `[n, H, W, C]` and
    'labels' int64 `[n]` (when any were kept), and one array per group and
    name, e.g. 'probabilities/fgsm' float32 `[n, K]` or 'true_class/natural'
    float32 `[N]`, as the attributes describe.
    """
    arrays = {'names': np.array(self.names)}
    if self.labels is not None:
      arrays.update(images=self.images, labels=self.labels)
    for group in ('adversarial', 'probabilities', 'robust', 'true_class'):
      arrays.update({f'{group}/{name}': value
                     for name, value in getattr(self, group).items()})
    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, EXAMPLES_FILE)
    buffer = io.BytesIO()  # GFile cannot seek as zipfile needs.
    np.savez_compressed(buffer, **arrays)
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(buffer.getvalue())
    return path

  @classmethod
  def load(cls, output_dir: str) -> Optional['Examples']:
    """The record `save` wrote in `output_dir` (shapes as there), or None."""
    path = os.path.join(output_dir, EXAMPLES_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, 'rb') as f:
      saved = dict(np.load(io.BytesIO(f.read())))
    names = [str(n) for n in saved['names']]
    labels = saved.get('labels')
    record = cls(keep=0 if labels is None else len(labels),
                 images=saved.get('images'), labels=labels)
    for group in ('adversarial', 'probabilities', 'robust', 'true_class'):
      getattr(record, group).update({
          n: saved[f'{group}/{n}'] for n in names if f'{group}/{n}' in saved})
    return record


def _append(old: Optional[np.ndarray], new: np.ndarray) -> np.ndarray:
  return new if old is None else np.concatenate([old, new])


@dataclasses.dataclass(frozen=True)
class Replica:
  """One copy of the model that evaluates batches.

  Attributes:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]` of this
      copy.
    device: where its batches run (e.g. '/gpu:1'), or None for the default.
    reseed: reseed(seed) resets every random stream of this copy to a state
      made from `seed`; the evaluation calls it before each batch with a
      seed made from the batch's index, so a batch draws the same
      randomness on whichever copy, device or worker computes it. None when
      the model has no such streams (or the caller does not care).
  """
  logits_fn: attacks.eot.LogitsFn
  device: Optional[str] = None
  reseed: Optional[Callable[[int], None]] = None


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which batches this process evaluates: those with index % count == index.

  With `count` > 1 (several workers), every worker writes its batches to
  the shared record, then waits for the others' and assembles the table
  (the chief, index 0, is the one that writes it).
  """
  index: int = 0
  count: int = 1

  def owns(self, batch: int) -> bool:
    return batch % self.count == self.index


class _BatchEvaluator:
  """Runs every attack on one batch with one model copy; pure per batch."""

  def __init__(self, replica: Replica, cfg: config_lib.AttackConfig,
               stochastic: bool, probe, transfer_logits_fn, extra_attacks,
               rows_per_mode: bool, gradient_fns=None,
               stage_rows: bool = False):
    # Monte Carlo and EOT passes several to a call where that is set.
    fn = self.logits_fn = attacks.eot.batched(
        replica.logits_fn, cfg.passes_per_call, cfg.max_call_images)
    self.replica, self.cfg, self.stochastic = replica, cfg, stochastic
    self.gradient_modes = attack_suite.gradient_modes(fn, cfg, stochastic,
                                                      probe, gradient_fns)
    self.modes = self.gradient_modes.names
    self.repeats = cfg.decision_repeats if stochastic else 1
    self.num_classes = int(fn(probe[:1]).shape[-1])
    self.variants = attack_suite.attack_variants(
        fn, cfg, self.gradient_modes, transfer_logits_fn, self.num_classes,
        stochastic)
    self.keep_picks = False
    self.passes: List[float] = []  # A batch's decisions' mean passes.
    if extra_attacks is not None:
      self.variants += extra_attacks(fn, self.gradient_modes)
    self.cascade = cfg.cascade and cfg.combined == 'worst_case'
    self.stages: Dict[str, int] = {}
    if self.cascade:
      # Cheapest and strongest first; only the worst case is a row, since
      # each attack runs on the images no earlier one broke.
      self.variants = attack_suite.cascade_order(self.variants)
      self.grouped, self.per_mode = {}, []
      # {row 'after_<stage>': variants run up to the end of that stage},
      # for every stage but the last (its row is 'combined').
      if stage_rows:
        kinds = [attack_suite.cascade_stage(v.name) for v in self.variants]
        for k, kind in enumerate(kinds[:-1]):
          if kind != kinds[k + 1] and kind != 'previous':
            self.stages[f'after_{kind}'] = k + 1
      self.names = ['natural', *self.stages, 'combined']
    else:
      self.grouped = attack_suite.variants_by_attack(self.variants)
      self.per_mode = [v.label for v in self.variants if rows_per_mode and
                       v.mode and len(self.grouped[v.name]) > 1]
      self.names = ['natural', *self.grouped, 'combined', *self.per_mode]

  def decide(self, images, y):
    """`repeats` fresh decisions (settled early when they can be); the mean
    passes each used go to `self.passes`."""
    return scoring.decide_repeated(
        self.logits_fn, images, y, self.cfg.mc_samples, self.repeats,
        self.cfg.decision_block if self.stochastic else 0,
        self.cfg.decision_z, self.passes)

  def decision_cost(self) -> float:
    """Passes per image of one verdict (`repeats` decisions)."""
    return float(self.repeats * self.cfg.mc_samples)

  def variant_cost(self, variant: attack_suite.Variant) -> float:
    """Passes per image of a variant's run and its verdict."""
    return variant.cost + self.decision_cost()

  def scoring_cost(self) -> float:
    """Passes per image of a batch's fresh scoring decisions."""
    rows = (len(self.grouped) + 1 + len(self.per_mode) +  # (+ combined)
            len(self.stages))
    return rows * self.decision_cost() if self.stochastic else 1.0

  def _reseed(self, index: int, part: int) -> None:
    """Resets the replica's random streams for `part` of batch `index`
    (0 the clean verdict, 1.. each variant, then the scoring), so a part
    draws the same randomness whether or not the parts before it were
    computed in this process or read back from the record."""
    if self.replica.reseed is not None:
      self.replica.reseed((self.cfg.seed * 1_000_003 + index) * 1_009 + part)

  def run(self, index: int, x: np.ndarray, y: np.ndarray, keep: int,
          progress: progress_lib.Progress,
          record: Optional[records_lib.BatchRecords] = None,
          inputs: str = '', where: str = '') -> Dict[str, np.ndarray]:
    """The batch's outcomes: per row `<name>/ok` bool `[R, b]`, `/l2`,
    `/linf` float `[b]`, `/probs` float `[b, K]` and `/images` (its first
    `keep` scored images); `seconds/<variant>` for each attack run.

    Each attack's output and verdict is kept in `record` as soon as it is
    made (`inputs`: the batch's checksum), and read back instead of being
    made again; `where` ('batch 2 of 5') names the batch in the progress.
    """
    seed = tf.constant(self.cfg.seed * 1_000_003 + index, tf.int64)
    xt, yt = tf.constant(x), tf.constant(y, tf.int64)
    out = {}
    self.passes = []  # This batch's decisions' mean passes.

    def put(name, images, ok, probs):
      size = attack_suite.image_size(images - x)
      out.update({f'{name}/ok': ok, f'{name}/l2': size['l2'],
                  f'{name}/linf': size['linf'], f'{name}/probs': probs,
                  f'{name}/images': images[:keep]})

    def score(name, pool):
      """Scores the worst of `pool`, with fresh decisions if stochastic;
      returns (image, ok, probs) of the pick as scored."""
      chosen, ok, probs = pool.worst(y)
      if self.stochastic:
        ok, probs = self.decide(chosen, y)
      put(name, chosen, ok, probs)
      return chosen, ok, probs

    self._reseed(index, 0)
    clean_ok, clean_probs = self.decide(xt, y)
    put('natural', x, clean_ok, clean_probs)
    outputs = {}
    # The cascade: each attack runs only on the images no attack before it
    # broke (by the verdicts so far); an image it did not run on counts as
    # right for it, so it is never its pick. On a stochastic model an image
    # leaves only once every one of its repeated decisions was wrong: one
    # the verdicts split on may still be scored right by the fresh
    # decisions, and then the later attacks must have had their try (on
    # the LWTA recipe, dropping at a majority left the worst case 1.6
    # points above the audit without a cascade).
    standing = clean_ok.any(axis=0)
    ids = np.arange(len(y))
    # The worst point found so far per image, for a focused attack's choice.
    found = scoring.Candidates([x], [clean_ok], [clean_probs])
    for part, variant in enumerate(self.variants, start=1):
      label = variant.label
      saved = (record.load_part(index, label, inputs) if record is not None
               else None)
      if saved is None:
        todo = ids[standing] if self.cascade else ids
        if self.cascade and variant.focus and len(todo):
          # The share `focus` of the standing images, nearest the decision
          # boundary first (by the worst point any attack found).
          _, worst_ok, worst_probs = found.worst(y)
          nearest = scoring.nearest_first(worst_ok, worst_probs, y)
          nearest = nearest[standing[nearest]]
          todo = np.sort(nearest[:int(np.ceil(variant.focus * len(todo)))])
        output, probs = x.copy(), clean_probs.copy()
        ok = np.ones_like(clean_ok)
        start = time.perf_counter()
        if len(todo):
          self._reseed(index, part)
          with progress.task(f'{label} on {where}'.strip(), kind=label,
                             cost=self.variant_cost(variant) * len(todo)
                             ) as task:
            with reporting.reporter(task.update):
              output[todo] = variant.run(
                  tf.gather(xt, todo), tf.gather(yt, todo), seed,
                  tf.constant(todo, tf.int64)).numpy()
            ok[:, todo], probs[todo] = self.decide(output[todo], y[todo])
        saved = {'output': output, 'ok': ok, 'probs': probs,
                 'attacked': np.isin(ids, todo),
                 'seconds': np.float64(time.perf_counter() - start)}
        if record is not None:
          record.save_part(index, label, saved, inputs)
      outputs[label] = saved
      found.add(saved['output'], saved['ok'], saved['probs'])
      broke = standing & ~saved['ok'].any(axis=0)
      standing &= ~broke
      out[f'seconds/{label}'] = np.float64(saved['seconds'])
      out[f'attacked/{label}'] = np.int64(saved['attacked'].sum())
      out[f'broke/{label}'] = np.int64(broke.sum())
    self._reseed(index, len(self.variants) + 1)
    with progress.task(f'scoring {where}'.strip(), kind='scoring',
                       cost=self.scoring_cost() * len(y), counted=False):
      pick = self._score(x, y, xt, yt, seed, clean_ok, clean_probs, outputs,
                         score)
    if self.keep_picks:  # Every image's worst-case pick, for the caller.
      out['combined/picks'] = pick
    out['decision/passes'] = np.float64(np.mean(self.passes))
    return out

  def _score(self, x, y, xt, yt, seed, clean_ok, clean_probs, outputs,
             score) -> np.ndarray:
    """Every row's pick per image, scored by fresh decisions (`score`);
    returns the combined row's picks `[b, H, W, C]`."""
    if self.cascade:  # The worst of every attack's output, freshly scored.
      pool = scoring.Candidates([x], [clean_ok], [clean_probs])
      ends = {end: name for name, end in self.stages.items()}
      for k, made in enumerate(outputs.values(), start=1):
        pool.add(made['output'], made['ok'], made['probs'])
        if k in ends:  # The worst case of the stages so far, scored afresh.
          score(ends[k], pool)
      return score('combined', pool)[0]
    # The combined worst case chooses among each attack's pick, judged by
    # the fresh decisions that scored it (unbiased by its own selection).
    picks = scoring.Candidates([x], [clean_ok], [clean_probs])
    for name, group in self.grouped.items():
      pool = scoring.Candidates([x], [clean_ok], [clean_probs])
      for variant in group:
        made = outputs[variant.label]
        pool.add(made['output'], made['ok'], made['probs'])
        if variant.label in self.per_mode:
          score(variant.label, scoring.Candidates(
              [x, made['output']], [clean_ok, made['ok']],
              [clean_probs, made['probs']]))
      picks.add(*score(name, pool))
    if self.cfg.combined == 'worst_case':
      return score('combined', picks)[0]
    else:
      chained = xt
      for group in self.grouped.values():  # Each from the last one's output.
        chained = group[0].run(chained, yt, seed)
      chained = chained.numpy()
      ok, probs = self.decide(chained, y)
      return score('combined', scoring.Candidates(
          [x, chained], [clean_ok, ok], [clean_probs, probs]))[0]


def evaluate_robustness(logits_fn: Optional[attacks.eot.LogitsFn],
                        images: np.ndarray, labels: np.ndarray,
                        cfg: config_lib.AttackConfig, *,
                        batch_size: int = 500, verbose: bool = True,
                        examples: Optional[Examples] = None,
                        transfer_logits_fn: Optional[
                            attacks.eot.LogitsFn] = None,
                        stochastic: Optional[bool] = None,
                        extra_attacks: Optional[Callable[
                            ..., List[attack_suite.Variant]]] = None,
                        rows_per_mode: bool = False,
                        outcomes: Optional[Dict[str, np.ndarray]] = None,
                        replicas: Sequence[Replica] = (),
                        record: Optional[records_lib.BatchRecords] = None,
                        shard: Shard = Shard(), wait_seconds: float = 3600.0,
                        title: str = 'robustness',
                        gradient_fns: Optional[Dict[
                            str, attacks.eot.LogitsFn]] = None,
                        picks: Optional[Dict[str, np.ndarray]] = None,
                        stage_rows: bool = False
                        ) -> List[Dict[str, object]]:
  """Scores a model on clean images and under each configured attack.

  Batches are independent: each is evaluated whole by one model copy
  (`replicas`, e.g. one per GPU, running at the same time), the batches can
  be shared out among workers (`shard`), and each finished batch can be
  kept (`record`) so a killed evaluation resumes. With every replica's
  `reseed` given, the table does not depend on any of that: a batch draws
  the same randomness wherever it runs.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`; pass one
      callable (attacks are compiled per callable). None when `replicas`
      are given.
    images: uint8 `[N, H, W, C]` test images.
    labels: int `[N]`.
    cfg: attack settings.
    batch_size: images per attack batch.
    verbose: show the progress (which attack runs on which batch, how far
      it is, the time left; `tf_slwta.progress`).
    examples: if given, filled in with what the figures draw (see
      `Examples`), from the outputs the evaluation computes anyway.
    transfer_logits_fn: the source model of the 'transfer' attack.
    stochastic: whether the model's passes differ; None finds out with two
      passes on the first images. A deterministic model gets one decision
      and the 'sample' gradient mode (unless cfg.gradient_modes says else).
    extra_attacks: extra_attacks(logits_fn, gradient_modes) -> more
      `attack_suite.Variant`s (e.g. the audit's random noise), called once
      per replica with its `attack_suite.GradientModes`; each a row of its
      own after the configured ones and a candidate of the combined worst
      case.
    rows_per_mode: also a row per gradient attack and mode, named like
      'pgd_linf/expected' (the worst of the clean image and that mode's
      output), after the combined row.
    outcomes: if given, filled with {row name: bool `[R, N]`, decision r on
      the image the row scored is right}, for per-image comparisons.
    replicas: the model copies that evaluate batches in parallel (default:
      one, `logits_fn`).
    record: where finished batches and attacks are kept; those already
      there (and made from the same images) are read back, not computed
      again.
    shard: this worker's share of the batches.
    wait_seconds: how long the chief of several workers waits for a new
      batch of the others before giving up (TimeoutError).
    title: what the progress calls the evaluation.
    gradient_fns: more {name: logits function} whose gradients every
      gradient attack also follows, as modes of their own (the caller's
      adaptive attacks); one replica only.
    picks: if given (with cfg.combined 'worst_case'), filled with
      {'combined': float32 `[N, H, W, C]`}, the image each test image's
      worst case picked.
    stage_rows: with a cascade, also a row 'after_<stage>' per stage of
      the cascade but the last (`attack_suite.CASCADE_STAGES`), before the
      combined row: the worst case of the attacks up to the end of that
      stage, freshly scored, so the next stage's row says what it found
      that they had missed.

  Returns:
    One dict per row (natural, each attack, the extra ones, combined, then
    the per-mode rows) with `COLUMNS` (see `scoring.summarize`; examples =
    N) plus 'repeats' (decisions per image), 'gradient_modes' and
    'seconds' (attack time summed over batches and devices). With several
    workers, each returns the whole table once every worker's batches are
    in the record.
  """
  replicas = list(replicas) or [Replica(logits_fn)]
  probe = data_lib.to_float_image(images[:8])
  if stochastic is None:
    stochastic = attack_suite.is_stochastic(replicas[0].logits_fn, probe)
  if shard.count > 1 and record is None:
    raise ValueError('Sharing an evaluation among workers needs a record '
                     'folder the chief can read their batches from.')
  if gradient_fns and len(replicas) > 1:
    raise ValueError('gradient_fns belong to one model copy: pass one '
                     'replica (or logits_fn) with them.')
  evaluators = [_BatchEvaluator(r, cfg, stochastic, probe, transfer_logits_fn,
                                extra_attacks, rows_per_mode, gradient_fns,
                                stage_rows)
                for r in replicas]
  for evaluator in evaluators:
    evaluator.keep_picks = picks is not None and cfg.combined == 'worst_case'
  first = evaluators[0]
  count = -(-len(images) // batch_size)
  bounds = [(i * batch_size, min((i + 1) * batch_size, len(images)))
            for i in range(count)]
  inputs = [records_lib.digest(images[a:b], np.asarray(labels[a:b]))
            for a, b in bounds]
  # Finished batches are read back (and checked) once, here.
  done: Dict[int, Dict[str, np.ndarray]] = {}
  if record is not None:
    for index in range(count):
      if shard.owns(index):
        arrays = record.load(index, inputs[index])
        if arrays is not None:
          done[index] = arrays
  todo = [i for i in range(count) if shard.owns(i) and i not in done]
  progress = progress_lib.Progress(
      title, enabled=verbose, unit='attack run', workers=len(evaluators))
  for index in todo:
    size = bounds[index][1] - bounds[index][0]
    for variant in first.variants:
      if record is None or not tf.io.gfile.exists(
          record.part_path(index, variant.label)):
        progress.total += 1
        progress.plan(variant.label, first.variant_cost(variant) * size)
    progress.plan('scoring', first.scoring_cost() * size)
  keep = examples.keep if examples is not None else 0

  def work(evaluator: _BatchEvaluator, index: int) -> None:
    start, stop = bounds[index]
    x = images[start:stop].astype(np.float32) / 255.0
    y = np.asarray(labels[start:stop]).astype(np.int64)
    with tf.device(evaluator.replica.device):
      arrays = evaluator.run(index, x, y, max(keep - start, 0), progress,
                             record, inputs[index],
                             f'batch {index + 1} of {count}')
    if record is not None:
      record.save(index, arrays, inputs[index])
    done[index] = arrays

  _spread(evaluators, todo, work)
  progress.close()
  if shard.count > 1:  # Every worker assembles the table (the chief writes).
    others = [i for i in range(count) if i not in done]
    record.wait(others, wait_seconds)
    for index in others:
      done[index] = record.load(index, inputs[index])
      if done[index] is None:
        raise ValueError(
            f'Batch {index} of {record.folder}, written by another worker, '
            f'was set aside (see the note above); run the same command '
            f'again to compute it.')
  rows = {name: scoring.Row() for name in first.names}
  seconds: Dict[str, float] = {}
  attacked: Dict[str, int] = {}
  broke: Dict[str, int] = {}
  for index in range(count):
    arrays = done[index]
    y = labels[bounds[index][0]:bounds[index][1]]
    for name in first.names:
      ok = arrays[f'{name}/ok']
      rows[name].add(ok, arrays[f'{name}/l2'], arrays[f'{name}/linf'])
      if examples is not None and name not in first.per_mode:
        examples.add(name, arrays[f'{name}/images'], y,
                     arrays[f'{name}/probs'], ok.mean(axis=0) >= 0.5)
    for k, v in arrays.items():
      kind, _, attack = k.partition('/')
      if kind in ('seconds', 'attacked', 'broke'):
        tally = {'seconds': seconds, 'attacked': attacked,
                 'broke': broke}[kind]
        tally[attack] = tally.get(attack, 0) + v.item()
  if first.keep_picks:
    picks['combined'] = np.concatenate(
        [done[index]['combined/picks'] for index in range(count)])
  table = _table(first, rows, seconds, cfg, len(images), outcomes)
  passes = [(float(done[i]['decision/passes']), bounds[i][1] - bounds[i][0])
            for i in range(count) if 'decision/passes' in done[i]]
  for row in table:  # Mean passes per decision, over the batches.
    row['passes'] = (sum(p * n for p, n in passes) /
                     sum(n for _, n in passes)) if passes else None
  if first.cascade:  # What each attack of the cascade did, in its order.
    for row in table:
      row['cascade'] = [{'attack': v.label, 'attacked': attacked.get(v.label, 0),
                         'broke': broke.get(v.label, 0),
                         'seconds': seconds.get(v.label, 0.0),
                         'settings': v.settings}
                        for v in first.variants]
  return table


def _spread(evaluators, todo, work) -> None:
  """Runs work(evaluator, index) for every index, one thread per evaluator
  taking the next index as it frees up (one evaluator: in this thread)."""
  if len(evaluators) == 1:
    for index in todo:
      work(evaluators[0], index)
    return
  queue = list(reversed(todo))
  lock = threading.Lock()
  errors = []

  def loop(evaluator):
    while True:
      with lock:
        if not queue or errors:
          return
        index = queue.pop()
      try:
        work(evaluator, index)
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)
        return

  threads = [threading.Thread(target=loop, args=(e,)) for e in evaluators]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  if errors:
    raise errors[0]


def _table(evaluator, rows, seconds, cfg, examples, outcomes):
  natural = None
  table = []
  given = {v.name: v for v in evaluator.variants}
  threats = {}
  for name in evaluator.names:
    ok = np.concatenate(rows[name].ok, axis=1)
    if outcomes is not None:
      outcomes[name] = ok
    numbers = scoring.summarize(ok, np.concatenate(rows[name].l2),
                                np.concatenate(rows[name].linf), natural)
    natural = ok if natural is None else natural
    base = name.split('/')[0]
    variant = given.get(base)
    if name in evaluator.stages:  # The cascade's worst case so far.
      ran = evaluator.variants[:evaluator.stages[name]]
      stage = name[len('after_'):]
      text = (f'worst case of the cascade up to its {stage} stage '
              f'({"+".join(dict.fromkeys(v.name for v in ran))})')
      threat = ' + '.join(dict.fromkeys(
          v.threat or attack_suite.threat_model(v.name, cfg) for v in ran))
    else:
      text = (variant.settings if variant is not None and variant.settings
              else attack_settings(base, cfg))
      threat = (variant.threat if variant is not None and variant.threat
                else attack_suite.threat_model(base, cfg))
    if name == 'combined':
      # A cascade has no per-attack rows: its attacks are the variants'.
      members = list(evaluator.grouped) or list(dict.fromkeys(
          v.name for v in evaluator.variants))
      parts = [threats.get(n) or (
          given[n].threat if given[n].threat else
          attack_suite.threat_model(n, cfg)) for n in members]
      threat = ' + '.join(dict.fromkeys(parts))
      if cfg.combined == 'worst_case':
        text = f'worst case of {"+".join(members)}'
    threats[name] = threat
    spent = sum(t for label, t in seconds.items()
                if label == name or label.startswith(name + '/'))
    table.append({'attack': name, 'threat': threat, 'settings': text,
                  **numbers, 'examples': examples,
                  'repeats': evaluator.repeats,
                  'gradient_modes': ','.join(evaluator.modes),
                  'inert_modes': ','.join(evaluator.gradient_modes.inert),
                  'seconds': spent})
  return table


def stochastic_table(rows: Sequence[Dict[str, object]]) -> bool:
  """Whether the rows were scored by repeated decisions (a stochastic
  model): only then has the table a Monte Carlo column."""
  return any(row.get('repeats', 1) > 1 for row in rows)


def table_notes(rows: Sequence[Dict[str, object]]) -> List[str]:
  """Sentences a reader of the table needs: what its error bars are, and
  why a worst case can sit above one of its own rows."""
  notes = []
  by_name = {r['attack']: r for r in rows}
  count = rows[0]['examples'] if rows else 0
  if stochastic_table(rows):
    passes = rows[0].get('passes')
    notes.append(
        f'{count} test images, each decision the mean softmax of several '
        'passes' + (f' ({passes:.1f} on average, drawn until the answer was '
                    'settled)' if passes else '') +
        f', each image scored by {rows[0].get("repeats")} fresh '
        'decisions; ± MC s.e. is the Monte Carlo standard error of those '
        'decisions, ± image s.e. sqrt(p (1 - p) / N) the spread over test '
        'images.')
  else:
    notes.append(f'{count} test images; the model is deterministic (one '
                 'decision per image); ± image s.e. is sqrt(p (1 - p) / N).')
  cascade = rows[0].get('cascade') if rows else None
  if cascade:
    notes.append(
        'A cascade: each attack ran only on the images no attack before it '
        'had broken, cheapest and strongest first (attacked -> broken): ' +
        ', '.join(f'{c["attack"]} {c["attacked"]} -> {c["broke"]}'
                  for c in cascade) + '.' +
        ''.join(f' {c["attack"]} ran {c["settings"]}.' for c in cascade
                if attack_suite.LEAD in c.get('settings', '') or
                '--cascade_focus' in c.get('settings', '')) +
        ' The per-attack table takes --nocascade.')
  inert = rows[0].get('inert_modes') if rows else ''
  if inert:
    notes.append(
        f'The model does not respond to the gradient mode(s) {inert} (it has '
        'no layers of this project that apply them): attacked in them, it '
        'would repeat the attacks of mode sample, so they were not run.')
  combined = by_name.get('combined')
  singles = [r for r in rows if r['attack'] not in ('natural', 'combined')
             and '/' not in r['attack']]
  if combined is not None and singles and stochastic_table(rows):
    lowest = min(singles, key=lambda r: r['accuracy'])
    if combined['accuracy'] > lowest['accuracy']:
      gap = combined['accuracy'] - lowest['accuracy']
      se = float(np.hypot(combined.get('mc_se', 0.0),
                          lowest.get('mc_se', 0.0)))
      notes.append(
          f'The combined worst case ({100 * combined["accuracy"]:.2f}%) sits '
          f'{100 * gap:.2f} ± {100 * se:.2f} points (Monte Carlo s.e.) above '
          f'{lowest["attack"]} ({100 * lowest["accuracy"]:.2f}%): per image '
          'it picks among the rows\' picks by their noisy verdicts and '
          'scores the pick with fresh decisions, so it can miss the best '
          f'pick; {lowest["attack"]}\'s number is an upper bound on the '
          'robust accuracy as well.')
  return notes


def _cell(column: str, value) -> str:
  if value is None:
    return '-'
  if column in ('accuracy', 'success_rate'):
    return f'{100 * value:.2f}'
  if column in ('mc_se', 'image_se'):
    return f'{100 * value:.2f}'
  if column in ('median_l2', 'max_linf'):
    return f'{value:.4f}'
  return str(value)


_HEADERS = {'attack': 'attack', 'threat': 'threat model',
            'settings': 'settings', 'accuracy': 'accuracy (%)',
            'mc_se': '± MC s.e.', 'image_se': '± image s.e.',
            'success_rate': 'attack success (%)',
            'median_l2': 'median L2 (successful)', 'max_linf': 'max Linf',
            'examples': 'images'}


def table_cells(rows: Sequence[Dict[str, object]]):
  """(column headers, one list of formatted cells per row) of the table;
  the Monte Carlo column only for a stochastic model's table."""
  columns = [c for c in COLUMNS if c != 'mc_se' or stochastic_table(rows)]
  return ([_HEADERS[c] for c in columns],
          [[_cell(c, row.get(c)) for c in columns] for row in rows])


def markdown_table(rows: Sequence[Dict[str, object]],
                   notes: Sequence[str] = ()) -> str:
  """The rows as a Markdown table (percentages with two decimals), then
  `notes` and the table's own notes (`table_notes`)."""
  headers, cells = table_cells(rows)
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join('---' for _ in headers) + '|']
  lines.extend('| ' + ' | '.join(row) + ' |' for row in cells)
  lines += [''] + [f'{note}' for note in [*notes, *table_notes(rows)]]
  return '\n'.join(lines) + '\n'


def write_report(rows: Sequence[Dict[str, object]], output_dir: str,
                 meta: Optional[Dict[str, object]] = None,
                 examples: Optional[Examples] = None,
                 notes: Sequence[str] = ()) -> Dict[str, str]:
  """Writes robustness.md, robustness.csv and robustness.json.

  Args:
    rows: from `evaluate_robustness`.
    output_dir: folder to write into (created if needed).
    meta: extra facts for the JSON (checkpoint, data set, settings).
    examples: the same evaluation's `Examples`, saved beside the table as
      figures_data.npz, so a reused table can still be drawn.
    notes: sentences to print under the table (e.g. that the run's
      training did not finish), before its own (`table_notes`).

  Returns:
    {'md': path, 'csv': path, 'json': path} (and 'examples': path).
  """
  tf.io.gfile.makedirs(output_dir)
  paths = {ext: os.path.join(output_dir, f'{FILE_STEM}.{ext}')
           for ext in ('md', 'csv', 'json')}
  with tf.io.gfile.GFile(paths['md'], 'w') as f:
    f.write(markdown_table(rows, notes))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction='ignore')
  writer.writeheader()
  writer.writerows(rows)
  with tf.io.gfile.GFile(paths['csv'], 'w') as f:
    f.write(buffer.getvalue())
  with tf.io.gfile.GFile(paths['json'], 'w') as f:
    json.dump({'rows': list(rows), **(meta or {}),
               'notes': [*notes, *table_notes(rows)]}, f, indent=2,
              sort_keys=True)
  if examples is not None:
    paths['examples'] = examples.save(output_dir)
  elif tf.io.gfile.exists(os.path.join(output_dir, EXAMPLES_FILE)):
    # An older evaluation's examples would be drawn beside this table.
    tf.io.gfile.remove(os.path.join(output_dir, EXAMPLES_FILE))
  return paths


# Beside the TensorBoard logs: the evaluations already logged there.
LOGGED_FILE = 'robustness_logged.json'


def summary_tag(row: Dict[str, object]) -> str:
  """A row's TensorBoard tag, with its threat model and image count:
  'robustness/linf_0.1/apgd_ce/1000_images'."""
  threat = attack_suite.threat_key(str(row.get('threat', 'unknown')))
  return f'robustness/{threat}/{row["attack"]}/{row["examples"]}_images'


def write_summaries(rows: Sequence[Dict[str, object]], summary_dir: str,
                    step: int, key: str = '') -> bool:
  """Logs every row's accuracy to TensorBoard (`summary_tag`), once.

  Args:
    rows: from `evaluate_robustness`.
    summary_dir: the run's TensorBoard folder.
    step: the step to log at (the evaluated checkpoint's).
    key: names the evaluation (`records.key` of its settings); an
      evaluation already logged under that key (read back from its
      record, say) is not logged again. '' logs always.

  Returns:
    Whether anything was logged.
  """
  logged_path = os.path.join(summary_dir, LOGGED_FILE)
  logged = []
  if key and tf.io.gfile.exists(logged_path):
    with tf.io.gfile.GFile(logged_path) as f:
      try:
        logged = json.load(f)
      except ValueError:
        logged = []
    if key in logged:
      return False
  writer = tf.summary.create_file_writer(summary_dir)
  with writer.as_default(step=step):
    for row in rows:
      tf.summary.scalar(summary_tag(row), row['accuracy'],
                        description=f'{row.get("settings", "")}; '
                        f'{row["examples"]} test images')
  writer.close()
  if key:
    records_lib.write_text(logged_path, json.dumps(logged + [key]))
  return True


def print_table(rows: Sequence[Dict[str, object]], stream=sys.stdout,
                notes: Sequence[str] = ()) -> None:
  """Prints the rows as an aligned plain-text table, then `notes` and the
  table's own notes."""
  headers, body = table_cells(rows)
  cells = [headers] + body
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  for r in cells:
    stream.write('  '.join(v.ljust(w) for v, w in zip(r, widths)).rstrip()
                 + '\n')
  for note in [*notes, *table_notes(rows)]:
    stream.write(textwrap.fill(note, width=100) + '\n')
  stream.flush()


def load_report(output_dir: str, meta: Dict[str, object]):
  """The rows of an earlier robustness.json made with exactly `meta`, or None.

  Lets a grid reuse the attacks already run on the same checkpoint with the
  same settings instead of running them again.
  """
  path = os.path.join(output_dir, f'{FILE_STEM}.json')
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  same = all(saved.get(k) == json.loads(json.dumps(v)) for k, v in meta.items())
  return saved['rows'] if same else None


# The seed's table columns, then what it did not report.
GRID_COLUMNS = (('natural', 'Natural'), ('pgd_linf', 'PGD Linf'),
                ('fgsm', 'FGSM'), ('cw', 'CW'), ('pgd_l2', 'PGD L2'),
                ('combined', 'Combined worst case'))


def write_grid(results: Sequence[Dict[str, object]],
               output_dir: str) -> Dict[str, str]:
  """Writes grid.md, grid.csv and grid.json: one row per run, accuracy (%).

  Args:
    results: [{'row': name, 'flagfile', 'output_dir', 'attacks': rows from
      `evaluate_robustness`}, ...].
    output_dir: folder for the three files.

  Returns:
    {'md': path, 'csv': path, 'json': path}.
  """
  table = []
  for result in results:
    by_name = {r['attack']: r for r in result['attacks']}
    threats = ', '.join(
        f'{title} {by_name[key]["threat"]}' for key, title in GRID_COLUMNS
        if key in by_name and by_name[key].get('threat') not in (None, 'none')
        and key != 'combined')
    table.append({'model': result['row'], **{
        title: (None if key not in by_name else
                round(100 * by_name[key]['accuracy'], 2))
        for key, title in GRID_COLUMNS},
                  'images': (result['attacks'][0]['examples']
                             if result['attacks'] else 0),
                  'threat models': threats, 'flagfile': result['flagfile']})
  tf.io.gfile.makedirs(output_dir)
  paths = {ext: os.path.join(output_dir, f'grid.{ext}')
           for ext in ('md', 'csv', 'json')}
  titles = [title for _, title in GRID_COLUMNS]
  lines = ['| model | ' + ' | '.join(f'{t} (%)' for t in titles) +
           ' | images | threat models | flagfile |',
           '|' + '---|' * (len(titles) + 4)]
  for row in table:
    cells = ['-' if row[t] is None else f'{row[t]:.2f}' for t in titles]
    lines.append(f'| {row["model"]} | ' + ' | '.join(cells) +
                 f' | {row["images"]} | {row["threat models"]} | '
                 f'{row["flagfile"]} |')
  with tf.io.gfile.GFile(paths['md'], 'w') as f:
    f.write('\n'.join(lines) + '\n')
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=['model', *titles, 'images',
                                              'threat models', 'flagfile'])
  writer.writeheader()
  writer.writerows(table)
  with tf.io.gfile.GFile(paths['csv'], 'w') as f:
    f.write(buffer.getvalue())
  with tf.io.gfile.GFile(paths['json'], 'w') as f:
    json.dump({'table': table, 'runs': list(results)}, f, indent=2,
              sort_keys=True)
  return paths

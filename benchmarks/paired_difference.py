"""The difference of two models' robust accuracy on the same images, with
its paired standard error.

Each audit (`--mode=audit`) leaves `audit_outcomes.npz` in its run folder:
per row, bool `[repeats, images]` (every fresh decision of every image).
Two audits of the same first test images can then be compared image by
image: the difference of their accuracies, its standard error over images
(the s.d. of the per-image differences / sqrt(n): much smaller than the two
images' s.e. added when the models fail on the same images), and the Monte
Carlo s.e. of each side's decisions.

  python benchmarks/paired_difference.py runs/u4/audit_outcomes.npz \\
      runs/u4_twin/audit_outcomes.npz --names=LWTA,ReLU
"""

import argparse

import numpy as np


def paired(a: np.ndarray, b: np.ndarray) -> dict:
  """The paired comparison of two outcome arrays.

  Args:
    a, b: bool `[repeats, n]` (repeats may differ), the same n images in the
      same order.

  Returns:
    {'a', 'b': accuracies in [0, 1], 'difference': a - b, 'image_se': the
    paired s.e. over images, 'mc_se': the Monte Carlo s.e. of the
    difference, 'only_a', 'only_b': images right (by the mean of their
    decisions, >= 0.5) for one model only, 'n'}.
  """
  if a.shape[-1] != b.shape[-1]:
    raise ValueError(f'the outcomes hold {a.shape[-1]} and {b.shape[-1]} '
                     f'images; audit both on the same images '
                     f'(--eval_examples).')
  per_a, per_b = a.mean(axis=0), b.mean(axis=0)
  n = per_a.size
  mc = lambda o: (o.mean(axis=1).std(ddof=1) / np.sqrt(len(o))
                  if len(o) > 1 else 0.0)
  return {'a': float(per_a.mean()), 'b': float(per_b.mean()),
          'difference': float(per_a.mean() - per_b.mean()),
          'image_se': float((per_a - per_b).std(ddof=1) / np.sqrt(n)),
          'mc_se': float(np.hypot(mc(a), mc(b))),
          'only_a': int(np.sum((per_a >= 0.5) & (per_b < 0.5))),
          'only_b': int(np.sum((per_b >= 0.5) & (per_a < 0.5))), 'n': n}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('a')
  parser.add_argument('b')
  parser.add_argument('--rows', default='natural,combined',
                      help='rows of audit_outcomes.npz to compare')
  parser.add_argument('--names', default='A,B')
  args = parser.parse_args()
  name_a, name_b = args.names.split(',')
  first, second = np.load(args.a), np.load(args.b)
  print(f'| row | {name_a} (%) | {name_b} (%) | difference (points) | '
        f'right for {name_a} only / {name_b} only | images |\n'
        '|---|---|---|---|---|---|')
  for row in args.rows.split(','):
    # The audit's strongest number: its escalated row when it escalated.
    pick = lambda o: o['escalated'] if (row == 'combined' and
                                        'escalated' in o.files) else o[row]
    r = paired(pick(first), pick(second))
    print(f'| {row} | {100 * r["a"]:.1f} | {100 * r["b"]:.1f} | '
          f'{100 * r["difference"]:+.1f} ± {100 * r["mc_se"]:.1f} MC ± '
          f'{100 * r["image_se"]:.1f} img (paired) | {r["only_a"]} / '
          f'{r["only_b"]} | {r["n"]} |')


if __name__ == '__main__':
  main()

"""Test set-up shared by every test module.

Two logical CPU devices are made before TensorFlow initializes, so
MirroredStrategy can be tested with two replicas on a one-CPU machine.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

_cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

# Library code never reads flags, but absl-using modules may touch FLAGS.
flags.FLAGS.mark_as_parsed()


@pytest.fixture
def repo_dir():
  """The repository root (where main.py and flags/ live)."""
  return REPO


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: starts subprocesses or trains for several seconds.')

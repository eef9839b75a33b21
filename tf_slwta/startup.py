"""TensorFlow's start-up messages, kept off the terminal.

Importing TensorFlow and finding its devices prints lines meant for its
developers ("oneDNN custom operations are on", "Could not find cuda
drivers", "This TensorFlow binary is optimized to use available CPU
instructions", ...) from C++, past `TF_CPP_MIN_LOG_LEVEL`. `quiet_tensorflow`
sends file descriptor 2 to a temporary file while the block runs and then
writes back every line that is not such a message, so nothing else is lost.
"""

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

NOISE = re.compile(
    r'All log messages before absl::InitializeLog|oneDNN custom operations|'
    r'cuda_|cudart_stub|cuInit|cpu_feature_guard|'
    r'This TensorFlow binary is optimized|To enable the following instructions|'
    r'TF-TRT Warning|Unable to register cu(DNN|FFT|BLAS) factory|'
    r'computation placer already registered|^[IWE]0000 ')


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
  """Filters TensorFlow's start-up lines out of stderr inside the block."""
  sys.stderr.flush()
  try:
    saved = os.dup(2)
  except OSError:  # No file descriptor 2 (e.g. a closed stderr): nothing to do.
    yield
    return
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      for line in capture.read().decode('utf-8', 'replace').splitlines():
        if line.strip() and not NOISE.search(line):
          sys.stderr.write(line + '\n')
      sys.stderr.flush()

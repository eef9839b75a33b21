"""Running a command in a pseudo-terminal, as a person at a terminal does.

Output that goes to a terminal takes other code paths than output piped
into a file (the progress line that rewrites itself): a crash that only a
terminal shows once hid behind a suite that piped everything.
"""

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from typing import List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def in_terminal(argv: Sequence[str], cwd, timeout: float = 1200,
                env: Optional[dict] = None) -> Tuple[int, str]:
  """Runs `argv` with a 120-column pseudo-terminal as stdin, stdout and
  stderr; returns (exit code, everything it wrote, '\\r\\n' as '\\n')."""
  leader, follower = os.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
  env = {**os.environ, 'PYTHONPATH': REPO, **(env or {})}
  process = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=follower,
                             stdout=follower, stderr=follower, close_fds=True)
  os.close(follower)
  chunks, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    ready, _, _ = select.select([leader], [], [], 1.0)
    if ready:
      try:
        data = os.read(leader, 1 << 16)
      except OSError:  # The terminal closed: the process is done.
        break
      if not data:
        break
      chunks.append(data)
    elif process.poll() is not None:
      break
  else:
    process.kill()
  os.close(leader)
  code = process.wait(timeout=60)
  text = b''.join(chunks).decode('utf-8', 'replace')
  return code, text.replace('\r\n', '\n')


def frames(text: str) -> List[str]:
  """The lines a terminal showed: each '\\r' redraw is one frame."""
  return [f for line in text.split('\n') for f in line.split('\r') if f]

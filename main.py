"""tf_slwta command line: train, evaluate and attack robust image classifiers.

`python main.py` runs the default job, the recipe flags/quickstart.cfg. A
flag typed on the command line overrides the same flag in any flagfile;
`--flagfile=F` replaces the default job. A run that already has a folder
(`--output_dir`) is opened from its own config.json. `python main.py
--help` lists the flags by section. See README.md.

The command lives in the package, `tf_slwta.cli.main`: an installed
tf_slwta runs the same as `tf-slwta` or `python -m tf_slwta`. This file
keeps `python main.py` working in a checkout, and `run(argv)` runs one
command in this process (the README's commands are tested that way).
"""

from tf_slwta.cli.main import console
from tf_slwta.cli.main import run  # pylint: disable=unused-import

if __name__ == '__main__':
  console()

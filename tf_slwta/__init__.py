"""tf_slwta: train image classifiers that stay correct under adversarial attack.

Modules: `config` (settings), `cli` (flags), `data` (pipelines), `models`,
`layers`, `training` (distributed loop). See README.md.
"""

__version__ = '0.1.0'

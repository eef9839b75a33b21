"""One module per --mode, each with `run(config, folder, ...)`.

`train`, `evaluate`, `certify`, `grid`, `export` and `predict` take the
run's `ExperimentConfig` and its `run_folder.RunFolder`; main.py picks one.
`common` holds what several of them share.
"""

"""The sweep runner: a config file's points, run one after another, and the sweep's report.

    points.py   config files (FILE[:ARG]) and their points, enumerated and checked up front
    status.py   sweep_status.json: what is known of each point
    runner.py   run_sweep(points, workdir): each point trained in turn, skipped when finished
    report.py   tables and plots from a sweep's workdir (reads files only; no JAX)

Above it sit the commands (`python -m resjax.train`, `python -m resjax.sweep`, launch.sh);
below it the training loop (resjax.training). Importing this package imports none of them.
"""

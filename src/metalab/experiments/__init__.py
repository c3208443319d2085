"""Learning across runs (issue 16): the run registry (SQL through SQLAlchemy), hyper-parameter
tuning on Optuna, meta-features of task sources and warm starts from similar past studies.

- :mod:`~metalab.experiments.registry`: the database, its schema and queries.
- :mod:`~metalab.experiments.record`: the hooks that train, eval, compare and tuning call.
- :mod:`~metalab.experiments.exchange`: ``runs import`` of result files, ``runs export``.

The registry needs ``pip install 'metalab[registry]'`` (SQLAlchemy); tuning ``metalab[tune]``.
"""

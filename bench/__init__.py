"""Benchmark syncmon against the other ways a Python program can wait for children.

Run it from the repository root::

    python -m bench            # default run, a few minutes
    python -m bench --quick    # smoke run, well under a minute
    python -m bench --help

Layout, one concern per module:

``contenders``  one interface, ``Contender``, and one small class per way of waiting
``workloads``   what is measured, written once against ``Contender``
``worker``      runs one trial (one contender, one workload) in a fresh process
``schedule``    plans the interleaved trials and runs the workers
``stats``       percentiles, medians, spreads
``report``      tables, target verdicts, JSON and the optional PNG
"""

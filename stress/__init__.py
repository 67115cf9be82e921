"""Stress harness for syncmon: force pid reuse and look for statuses and signals that go astray.

``python -m stress`` runs each subject (syncmon, and a contrast reaper built on
``waitid(P_ALL)``) in its own worker process, inside a fresh pid namespace whose
``pid_max`` is a few hundred, so that pids come back within milliseconds.  Each
worker runs the scenarios in :mod:`stress.scenarios` and reports what went wrong.

Layout, one concern per module:

=====================  ==========================================================
``__main__``           command line, exit status
``config``             the knobs, and the short/full presets
``driver``             starting one worker per subject and reading its reports
``namespace``          the pid namespace: entering it, and the init that runs as pid 1
``worker``             the process that runs the scenarios against one subject
``crew``               thread pools started up front (signal masks, pid ranges)
``subjects``           what a scenario may do with a child; the syncmon adapter
``contrast``           the obvious ``P_ALL`` reaper, for comparison
``scenarios``          the workloads and the checks they make
``trees``              scenario ``trees``: process trees beside bystanders
``pool``               scenario ``pool``: a ProcessPoolExecutor whose workers get killed
``procfs``             what the worker leaves behind: fds, children, zombies
``report``             the table, the progress line and the JSON document
=====================  ==========================================================
"""

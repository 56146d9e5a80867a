"""The worker's exit codes, in one place (listed in ``python -m workerapp --help``)."""

#: Idle for WORKER_IDLE_SECONDS, or stopped by SIGTERM / Ctrl-C.
OK = 0
#: Bad command line or settings, or CLUSTER_TOKEN not set.
USAGE = 2
#: A node refused a call with a 4xx (wrong token, a request it calls bad): retrying would not help.
REJECTED = 3
#: An unexpected error (a broken process pool, a bug): every task held was handed back first.
FAILED = 4

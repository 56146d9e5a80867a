"""The task store: what a node holds about tasks and results, and its journal on disk.

Owns the queue, leases, kept results, idempotency keys, identical-task sharing and checkpoints
(``tasks.py`` and the small modules beside it: ``results.py`` the kept results,
``spotchecks.py`` the results held for a spot-check and the unchecked ones kept for a rerun),
the spot-checks themselves (``verification.py``, run by ``checker.py``), and the SQLite journal
that makes them survive a restart (``journal.py``). Knows nothing of HTTP, workers' processes or
the peer: it may import the standard library and its own modules only
(``tests/test_layering.py``).
"""

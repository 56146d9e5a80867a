"""The fleet: the worker pool and its quota, loans of quota between nodes, the client of the
peer node, and the scaler that launches and stops workers.

It may import ``nodeapp.store`` (never ``nodeapp.web``), ``nodeapp.config`` and ``provisioning``
(the launchers); the scaler sees the node through the small ``ScalingFigures``/``FleetNode``
interface it defines, not through ``nodeapp.node`` (``tests/test_layering.py``).
"""

"""Benchmarks: the cluster against its ceilings and against RQ and Celery (see bench/README.md)."""

"""Everything is in setup.cfg except the C extension, which is optional: without a compiler (or
on a platform where it fails to build) the install still succeeds and workers use the hashlib
loop (workerapp/engine.py)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("workerapp._native", sources=["workerapp/_sha512chain.c"], optional=True)])

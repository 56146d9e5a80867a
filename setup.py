"""Everything is in setup.cfg except the C extension, which is optional: without a compiler (or
on a platform where it fails to build) the install still succeeds and workers use the hashlib
loop (workerapp/engine.py)."""

import os

from setuptools import Extension, setup

# TM_PURE_WHEEL=1 (provisioning/artifacts.py): a py3-none-any wheel for every architecture; it
# carries the C source (package data) and a worker compiles it at boot (workerapp/native_build.py).
NATIVE = [] if os.environ.get("TM_PURE_WHEEL") == "1" else [
    Extension("workerapp._native", sources=["workerapp/_sha512chain.c"], optional=True)]

setup(ext_modules=NATIVE)

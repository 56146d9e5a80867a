"""``python -m workerapp.native_build``: compile the C hash engine next to an installed workerapp.

``pip install`` of the source builds ``workerapp._native`` through setup.py. The wheel that
``run_program.py`` delivers to EC2 is pure Python (one wheel for x86_64 and arm64 workers) and
carries ``_sha512chain.c``, so a worker's user-data runs this module to compile the extension
for the machine it runs on. Exit code 0 when the native engine is usable afterwards, else 1 (the
worker then uses the hashlib loop).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE = PACKAGE_DIR / "_sha512chain.c"


def build(package_dir: Path = PACKAGE_DIR) -> None:
    """Compile ``package_dir/_sha512chain.c`` into ``package_dir`` as ``workerapp._native``
    with setuptools' ``build_ext`` (raises its error if the compiler fails)."""
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    extension = Extension("workerapp._native", sources=[str(package_dir / SOURCE.name)])
    with tempfile.TemporaryDirectory(prefix="tm-native-") as tmp:
        command = build_ext(Distribution({"name": "workerapp-native", "ext_modules": [extension]}))
        command.build_lib, command.build_temp = str(package_dir.parent), tmp
        command.ensure_finalized()
        command.run()


def main() -> int:
    try:
        build()
    except Exception as exc:  # a missing compiler or header: the hashlib loop stays
        print(f"workerapp.native_build: not built: {exc}", file=sys.stderr)
        return 1
    from workerapp.engine import select_engine

    engine = select_engine({})
    print(f"workerapp.native_build: engine {engine.name}")
    return 0 if engine.name == "native" else 1


if __name__ == "__main__":
    sys.exit(main())

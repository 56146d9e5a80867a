"""The command that runs this program again, as the user can type it in the same shell.

A hint such as ``python3 run_program.py --destroy`` fails when the dependencies live in a venv
that is not active; the hint names the interpreter that is running now instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys


def python_command(executable: str | None = None, cwd: str | None = None) -> str:
    """``python3`` (or ``python``) when that name on PATH is this very interpreter (no symlink
    resolved: a venv's python is a link to the system one but has other packages); otherwise
    the interpreter's path, relative when it lies under ``cwd`` (``.venv/bin/python``)."""
    executable = os.path.abspath(executable or sys.executable)
    cwd = os.path.abspath(cwd or os.getcwd())
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found and os.path.abspath(found) == executable:
            return name
    if executable.startswith(cwd + os.sep):
        return shlex.quote(os.path.relpath(executable, cwd))
    return shlex.quote(executable)


def program_command(*args: str, script: str | None = None, executable: str | None = None,
                    cwd: str | None = None) -> str:
    """``<python> run_program.py <args>``, with the script's path as it was started (``sys.argv[0]``)."""
    script = script if script is not None else sys.argv[0]
    if os.path.basename(script or "") != "run_program.py":
        script = "run_program.py"
    return " ".join([python_command(executable, cwd), shlex.quote(script), *map(shlex.quote, args)])

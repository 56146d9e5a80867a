#!/usr/bin/env python3
"""Run the task manager.

    python3 run_program.py --local                two nodes and their workers on this machine
    python3 run_program.py --local --proxy        the same, each node behind nginx as in AWS mode
    python3 run_program.py [AWS options]          create the cluster on AWS (see README)
    python3 run_program.py --destroy              remove everything the AWS mode created

Settings come from the environment variables of the README (MAX_NUM_OF_WORKERS, ...); the flags
below override them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from tmcommon.invocation import program_command, python_command

try:
    from tmcommon.settings import SETTINGS, ConfigError
    from tmrun.aws import add_aws_arguments
except ModuleNotFoundError as missing:  # run by an interpreter without the project's packages
    if __name__ != "__main__":
        raise
    venv_python = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv", "bin", "python")
    print(f"error: {python_command()} cannot import {missing.name}: this program runs in the project's venv. "
          f"Run ./init_setup.sh (once; it makes .venv/), then: {program_command(*sys.argv[1:], executable=venv_python)}",
          file=sys.stderr)
    sys.exit(2)

#: A usage line of the docstring: the command, two spaces or more, what it does.
USAGE_LINE = re.compile(r"^    (python3 run_program\.py.*?)\s{2,}(\S.*)$")


def parse_ports(text: str) -> tuple[int, int]:
    try:
        a, b = (int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ports wants two ports like 8001,8002, got {text!r}") from None
    if not (0 < a < 65536 and 0 < b < 65536) or a == b:
        raise argparse.ArgumentTypeError("--ports wants two different ports from 1 to 65535")
    return a, b


def help_text() -> str:
    """The docstring, its commands spelled as they work in this shell (``.venv/bin/python
    run_program.py``), their descriptions in one column."""
    documented, typed = "python3 run_program.py", program_command()
    usage = [(i, USAGE_LINE.match(line)) for i, line in enumerate(__doc__.splitlines())]
    commands = {i: typed + m.group(1)[len(documented):] for i, m in usage if m}
    width = max(map(len, commands.values()))
    lines = __doc__.splitlines()
    for i, m in usage:
        if m:
            lines[i] = f"    {commands[i]:<{width}}   {m.group(2)}"
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run both nodes and their workers on this machine")
    mode.add_argument("--destroy", action="store_true", help="AWS: remove every resource of the cluster")
    parser.add_argument("--ports", type=parse_ports, default=(8001, 8002), help="local mode: node ports (default 8001,8002)")
    workers = SETTINGS["max_workers"]
    parser.add_argument("--max-workers", type=int,
                        help=f"{workers.env} per node (default {workers.describe_default()})")
    parser.add_argument("--no-progress", action="store_true", help="local mode: no live status line")
    parser.add_argument("--data-dir", default=".tm-data", metavar="DIR",
                        help="local mode: each node journals its tasks and results in DIR/node-a, DIR/node-b, "
                             "so that the next run finds them (default .tm-data; '' = in memory only)")
    parser.add_argument("--fresh", action="store_true", help="local mode: empty the nodes' journals first")
    parser.add_argument("--proxy", action="store_true",
                        help="local mode: each node behind nginx, configured as AWS mode configures it "
                             "(needs nginx installed)")
    add_aws_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = "local mode" if args.local else "AWS mode"
    try:
        if args.local:
            from tmrun.local import run_local

            return run_local(args)
        from tmrun.aws import run_aws  # imports boto3 only for AWS mode

        return run_aws(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a dependency of this mode is not installed
        hint = "run ./init_setup.sh" if args.local else "run ./init_setup.sh, or use --local"
        print(f"error: {mode} is not available: could not import {exc.name or exc} ({exc}); {hint}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

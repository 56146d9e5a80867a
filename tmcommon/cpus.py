"""How many CPUs this process may use (for worker lanes and the local launcher's cap)."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one, else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name as the OS tells it (``/proc/cpuinfo`` on Linux), else ``unknown``."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith(("model name", "Processor", "cpu model")):
                    name = " ".join(line.partition(":")[2].split())
                    return "".join(ch for ch in name if " " <= ch <= "~")[:80] or "unknown"
    except OSError:
        pass
    return "unknown"

"""Shared by every benchmark: machine facts, statistics, the table printer and the JSON writer.

Only the standard library, so that the peers' environment (bench/.venv-peers) can import it too.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
PEERS_PYTHON = BENCH_DIR / ".venv-peers" / "bin" / "python"


def machine() -> dict:
    """What the figures ran on, and how busy it was when they started."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = 0.0
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "mem_gib": round(mem_gib, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def loadavg() -> float:
    """The one-minute load average (the machine is shared: a high value means noisy figures)."""
    return round(os.getloadavg()[0], 2)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of ``values`` (empty -> nan)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def spread(values: Iterable[float]) -> dict:
    """Median, min and max of the runs of one figure."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def fmt_spread(s: dict, digits: int = 3) -> str:
    """``median [min–max]``."""
    if not s or s.get("median") is None:
        return "-"
    return f"{fmt(s['median'], digits)} [{fmt(s['min'], digits)}-{fmt(s['max'], digits)}]"


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A plain fixed-width table on stdout."""
    rows = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    sys.stdout.flush()


def write_json(name: str, data: dict, path: str | Path | None = None) -> Path:
    """Write ``data`` to ``path`` or bench/results/<name>-<UTC time>.json; returns the path."""
    if path is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    print(f"\nJSON: {path}")
    return path


def rss_kib(pid: int) -> int:
    """Resident set size of a process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct child pids of ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def submit_all(tasks: Sequence[tuple[bytes, int]], clients: int, make_submit) -> tuple[list[str], float]:
    """Enqueue ``tasks`` from ``clients`` threads (thread t sends tasks t, t+clients, ...).

    ``make_submit(t)`` returns thread t's ``submit(index, body, iterations) -> id`` (each thread
    its own connection). Returns the ids by task index and the seconds the enqueueing took.
    """
    import threading

    ids: list[str | None] = [None] * len(tasks)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            submit = make_submit(t)
            for i in range(t, len(tasks), clients):
                ids[i] = submit(i, *tasks[i])
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return ids, time.perf_counter() - start  # type: ignore[return-value]


def wait_until(condition, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``condition`` until truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process and its reaped children (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            todo += children(current)
        except OSError:
            pass
    return found


def cpu_hash_rate(seconds: float = 1.0) -> float:
    """SHA-512 chain iterations per CPU second of this process (what a core does while it runs,
    whatever else the shared machine is doing; the wall-clock rate drops with the load)."""
    from workerapp.compute import measure_hash_rate

    return measure_hash_rate(seconds, clock=time.process_time)


def runqueue_wait_seconds(pid: int) -> float:
    """Seconds the threads of a live process spent runnable but waiting for a CPU (schedstat).

    Wall time not covered by CPU or by this wait is time the process chose to sleep.
    """
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                pass
    except OSError:
        return 0.0
    return total / 1e9

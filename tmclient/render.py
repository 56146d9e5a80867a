"""Rich tables and progress bars for the CLI and for ``run_program.py --local``'s live status."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

#: Task ids are 32 hex characters; their column never shrinks below that.
ID_WIDTH = 32


def console(stderr: bool = False) -> Console:
    """A console that keeps whole lines when the output is a pipe or a file (no 80-column wrap)."""
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, width=240)
    return con


def show(renderable, stderr: bool = False) -> None:
    """Print a table; to a pipe or a file without the trailing padding of a fixed-width console."""
    con = console(stderr)
    if con.is_terminal:
        con.print(renderable)
        return
    with con.capture() as captured:
        con.print(renderable)
    stream = sys.stderr if stderr else sys.stdout
    stream.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    stream.flush()


def when(timestamp: float | None) -> str:
    if not timestamp:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def tasks_table(tasks: Iterable[dict]) -> Table:
    """``tm status`` / ``tm wait``: one row per task."""
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("state")
    table.add_column("iterations", justify="right")
    table.add_column("enqueued")
    table.add_column("completed")
    table.add_column("result / reason", overflow="fold")
    styles = {"completed": "green", "failed": "red", "running": "yellow"}
    for task in tasks:
        state = task.get("state", "")
        table.add_row(
            task.get("id", ""), Text(state, style=styles.get(state, "")), str(task.get("iterations", "")),
            when(task.get("enqueued_at")), when(task.get("completed_at")),
            task.get("result") or task.get("reason") or "",
        )
    return table


def results_table(results: Iterable[dict]) -> Table:
    """``tm pull``: the newest results."""
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("iterations", justify="right")
    table.add_column("completed")
    table.add_column("result", overflow="fold")
    for item in results:
        table.add_row(item.get("id", ""), str(item.get("iterations", "")), when(item.get("completed_at")),
                      item.get("result") or "")
    return table


def stats_view(stats: dict) -> Group:
    """``tm stats`` and ``run_program.py --local``: one row per node, a total row, and the peer links."""
    table = Table(title=f"cluster at {when(time.time())}", title_justify="left", pad_edge=False)
    for name in ("node", "queued", "running", "completed", "failed", "workers live+pending/max",
                 "lent", "borrowed", "peer"):
        table.add_column(name, justify="left" if name in ("node", "peer") else "right")
    for node in stats["nodes"]:
        if not node.get("reachable"):
            table.add_row(node["url"], *[""] * 7, Text(f"unreachable: {node.get('error', '')}", style="red"))
            continue
        workers, quota, peer = node.get("workers", {}), node.get("quota", {}), node.get("peer") or {}
        link = {True: Text("reachable", style="green"), False: Text("unreachable", style="red")}.get(
            peer.get("reachable"), Text("not contacted yet" if peer.get("url") else "no peer", style="dim"))
        table.add_row(
            f"{node.get('node') or ''} {node['url']}".strip(), str(node.get("queued", 0)), str(node.get("running", 0)),
            str(node.get("completed", 0)), str(node.get("failed", 0)),
            f"{workers.get('live', 0)}+{workers.get('pending', 0)}/{workers.get('max', 0)}",
            str(quota.get("lent", 0)), str(quota.get("borrowed", 0)), link,
        )
    totals = stats["totals"]
    tw = totals["workers"]
    table.add_row(Text("total", style="bold"), str(totals["queued"]), str(totals["running"]),
                  str(totals["completed"]), str(totals["failed"]), f"{tw['live']}+{tw['pending']}/{tw['max']}",
                  "", "", "", end_section=True)
    lines = [Text(f"{when(d.get('at'))} {d['node']}: {d.get('reason', '')} -> launched {d.get('launched', 0)}, "
                  f"borrowed {d.get('borrowed', 0)}", style="dim") for d in newest_decisions(stats["nodes"], 5)]
    if lines:
        lines.insert(0, Text("last scaling decisions", style="bold"))
    return Group(table, *lines)


def newest_decisions(nodes: list[dict], count: int) -> list[dict]:
    """The ``count`` newest scaling decisions of all nodes, each tagged with its node's name."""
    decisions = [{**d, "node": n.get("node") or n.get("url", "")}
                 for n in nodes if n.get("reachable") for d in (n.get("scaler") or {}).get("decisions", [])]
    return sorted(decisions, key=lambda d: d.get("at") or 0, reverse=True)[:count]


@contextmanager
def progress_bars() -> Iterator[Progress]:
    """Progress bars on stderr: count, percentage, elapsed time and ETA.

    The bars stay on screen when the block ends normally; on an error they are taken away,
    so that the error is the one line the user reads.
    """
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=False,
    )
    with progress:
        try:
            yield progress
        except BaseException:
            progress.live.transient = True
            raise

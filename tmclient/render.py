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

from tmclient.client import capacity

#: Task ids are 32 hex characters; their column never shrinks below that.
ID_WIDTH = 32


def console(stderr: bool = False) -> Console:
    """A console that keeps whole lines when the output is a pipe or a file (no 80-column wrap)."""
    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal:
        con = Console(stderr=stderr, highlight=False, width=240)
    return con


def is_terminal(stderr: bool = False) -> bool:
    """Whether tables go to a terminal (then they are cut to fit it) or to a pipe (kept whole)."""
    return console(stderr).is_terminal


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


#: Narrower terminals get no "enqueued" column in ``tm status``/``tm wait``, to leave room for the result.
ENQUEUED_FROM_WIDTH = 110


def listing(fit: bool | None, width: int | None) -> tuple[Table, bool, int]:
    """A table of one row per task, whether it fits and the width it fits. With ``fit``
    (default: when stdout is a terminal, of its ``width``) each row is one line: the last column
    takes the width left and ends in "…" where its text is longer. Otherwise (a pipe, a file)
    the table is as wide as its text."""
    fit = is_terminal() if fit is None else fit
    width = width or console().width
    return Table(box=None, pad_edge=False, expand=fit), fit, width


def add_text_column(table: Table, header: str, fit: bool) -> None:
    """The last column: results (128 characters) and reasons."""
    if fit:
        table.add_column(header, no_wrap=True, overflow="ellipsis", ratio=1)
    else:
        table.add_column(header, overflow="fold")


def tasks_table(tasks: Iterable[dict], fit: bool | None = None, width: int | None = None) -> Table:
    """``tm status`` / ``tm wait``: one row per task (see ``listing`` for ``fit`` and ``width``)."""
    table, fit, width = listing(fit, width)
    enqueued = not fit or width >= ENQUEUED_FROM_WIDTH
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("state", no_wrap=True)
    tasks = list(tasks)
    prioritised = any(task.get("priority") for task in tasks)  # the column only when it says something
    if prioritised:
        table.add_column("priority", justify="right", no_wrap=True)
    table.add_column("iterations", justify="right", no_wrap=True)
    if enqueued:
        table.add_column("enqueued", no_wrap=True)
    table.add_column("completed", no_wrap=True)
    add_text_column(table, "result" if fit else "result / reason", fit)  # in a terminal: a header it can show whole
    styles = {"completed": "green", "failed": "red", "running": "yellow"}
    for task in tasks:
        state = task.get("state", "")
        table.add_row(
            task.get("id", ""), Text(state, style=styles.get(state, "")),
            *([str(task.get("priority", 0))] if prioritised else []), str(task.get("iterations", "")),
            *([when(task.get("enqueued_at"))] if enqueued else []), when(task.get("completed_at")),
            task.get("result") or task.get("reason") or "",
        )
    return table


def results_table(results: Iterable[dict], fit: bool | None = None, width: int | None = None) -> Table:
    """``tm pull``: the newest results (see ``listing`` for ``fit`` and ``width``)."""
    table, fit, _ = listing(fit, width)
    table.add_column("id", no_wrap=True, min_width=ID_WIDTH)
    table.add_column("iterations", justify="right", no_wrap=True)
    table.add_column("completed", no_wrap=True)
    add_text_column(table, "result", fit)
    for item in results:
        table.add_row(item.get("id", ""), str(item.get("iterations", "")), when(item.get("completed_at")),
                      item.get("result") or "")
    return table


def keys_table(keys: Iterable[dict]) -> Table:
    """``tm keys list``: the cluster's client keys, revoked ones last-marked."""
    table = Table(box=None, pad_edge=False)
    for header in ("id", "name", "created", "revoked"):
        table.add_column(header, no_wrap=True)
    for key in keys:
        revoked = key.get("revoked_at")
        table.add_row(key.get("id", ""), key.get("name", ""), when(key.get("created_at")),
                      Text(when(revoked), style="red") if revoked else "")
    return table


def active_table(workers: Iterable[dict]) -> Table:
    """``tm active``: one row per task a worker holds, grouped by worker."""
    table = Table(box=None, pad_edge=False)
    table.add_column("worker", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("task", no_wrap=True, min_width=ID_WIDTH)
    for header in ("priority", "done", "iterations", "held"):
        table.add_column(header, justify="right", no_wrap=True)
    for worker in workers:
        for index, task in enumerate(worker.get("tasks", [])):
            table.add_row(worker.get("id", "") if index == 0 else "", str(task.get("node", "")), task.get("id", ""),
                          str(task.get("priority", 0)), str(task.get("done", 0)), str(task.get("iterations", "")),
                          f"{task.get('held_seconds', 0):.1f}s")
    return table


def stats_view(stats: dict) -> Group:
    """``tm stats`` and ``run_program.py --local``: one row per node, a total row, the peer links,
    and the newest scaling decisions; fits 80 columns (URLs and long lines go below the table)."""
    table = Table(title=f"cluster at {when(time.time())} (workers: live+pending/capacity)", title_justify="left",
                  box=None, pad_edge=False,
                  header_style="bold underline")
    for name in ("node", "queued", "running", "done", "failed", "workers", "lent", "borrowed", "peer"):
        table.add_column(name, justify="left" if name in ("node", "peer") else "right", no_wrap=True)
    below = []
    for node in stats["nodes"]:
        if not node.get("reachable"):
            below.append(Text(f"{node['url']} unreachable: {node.get('error', '')}", style="red"))
            continue
        workers, quota, peer = node.get("workers", {}), node.get("quota", {}), node.get("peer") or {}
        link = {True: Text("reachable", style="green"), False: Text("unreachable", style="red")}.get(
            peer.get("reachable"), Text("not yet" if peer.get("url") else "no peer", style="dim"))
        table.add_row(
            node.get("node") or node["url"], str(node.get("queued", 0)), str(node.get("running", 0)),
            str(node.get("completed", 0)), str(node.get("failed", 0)),
            f"{workers.get('live', 0)}+{workers.get('pending', 0)}/{capacity(workers)}",
            str(quota.get("lent", 0)), str(quota.get("borrowed", 0)), link,
        )
    totals = stats["totals"]
    tw = totals["workers"]
    table.add_row(Text("total", style="bold"), str(totals["queued"]), str(totals["running"]),
                  str(totals["completed"]), str(totals["failed"]), f"{tw['live']}+{tw['pending']}/{capacity(tw)}")
    for node in stats["nodes"]:
        workers = node.get("workers") or {}
        if node.get("reachable") and capacity(workers) < int(workers.get("max") or 0):
            below.append(Text(f"{node.get('node') or node['url']}: capacity {capacity(workers)} of max "
                              f"{workers['max']}: {workers.get('capacity_why', '')}", style="yellow"))
    where = "  ".join(f"{n.get('node')} {n['url']}" for n in stats["nodes"] if n.get("reachable") and n.get("node"))
    if where:
        below.append(Text(where, style="dim"))
    lines = [Text(decision_line(d), style="dim", no_wrap=True, overflow="ellipsis")
             for d in newest_decisions(stats["nodes"], 5)]
    if lines:
        lines.insert(0, Text("last scaling decisions", style="bold"))
    return Group(table, *below, *lines)


def decision_line(decision: dict) -> str:
    """One scaling decision of ``newest_decisions``: time, node, why, what it did."""
    figures = decision.get("figures") or {}
    shown = (f" (workers {figures.get('live', 0)}+{figures.get('pending', 0)}/{figures['capacity']})"
             if figures.get("capacity") is not None else "")
    return (f"{when(decision.get('at'))} {decision['node']}: {decision.get('reason', '')} -> launched "
            f"{decision.get('launched', 0)}, borrowed {decision.get('borrowed', 0)}{shown}")


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

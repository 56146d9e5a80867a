"""tm: the task manager from a terminal. Node URLs come from --nodes or TM_NODES.

Exit codes: 0 done; 1 an error (a node answered with an error, no node reachable, a file
unreadable); 2 bad usage (also: no node URLs); 3 enqueue --wait, wait or bench ran out of
time; 4 a task shown or waited on has failed or was cancelled; 5 a task is not on the node that
answered and the other node could not be asked (it may be there: try again). Every error is
one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from rich.live import Live
from rich.text import Text

from tmclient import render
from tmclient.bench import run_bench
from tmclient.client import (
    ApiError,
    BadNodes,
    Client,
    EnqueueIncomplete,
    NodesUnreachable,
    TaskManagerError,
    WaitTimeout,
)
from tmclient.ctrl_c import CtrlC

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TIMEOUT, EXIT_FAILED, EXIT_PEER_UNAVAILABLE = 0, 1, 2, 3, 4, 5
#: States of a task that ended without a result.
UNFINISHED = ("failed", "cancelled")


class UsageError(Exception):
    """Bad command line (exit code 2)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


#: Each command's one-line summary, what it does, and examples: ``tm COMMAND --help``.
COMMAND_HELP: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "enqueue": ("queue one task per file (- reads stdin); prints the ids",
                "Every file is read before anything is sent, so a missing file queues nothing. Several files\n"
                "go in batches of up to 1,000 tasks, each queued whole or not at all; a refused batch names\n"
                "the file that was refused.",
                ("tm enqueue hello.txt -n 1000", "tm enqueue t*.txt -n 100000 > ids.txt",
                 "printf hi | tm enqueue - -n 10 --wait")),
    "status": ("show tasks by id",
               "One row per task: id, state, iterations, times, result or reason. Ids that no node knows are\n"
               "named on stderr after the table; the exit code is then 1 (4 if a task failed or was cancelled).",
               ("tm status c0107eac5a9f4136ac63275fae2fa957", "tm status - < ids.txt", "tm --json status ID")),
    "cancel": ("cancel queued or running tasks",
               "A running task's worker stops at its next heartbeat. A task that already completed or failed\n"
               "is refused (not_cancellable); the others are still cancelled.",
               ("tm cancel ID", "tm cancel - < ids.txt")),
    "retry": ("queue failed or cancelled tasks again",
              "The task is queued again under the same id.",
              ("tm retry ID", "tm retry --no-reuse ID")),
    "results": ("every result after a cursor, oldest first, once each",
                "Results of both nodes (GET /results); the cursor to go on from is printed on stderr at the end.",
                ("tm results", "tm results --cursor-file .tm-cursor", "tm results --cursor-file .tm-cursor --follow",
                 "tm --json results --after CURSOR")),
    "pull": ("the newest results of the cluster",
             "Newest first (POST /pullCompleted).",
             ("tm pull", "tm pull --top 50 --json")),
    "wait": ("wait for tasks with a progress bar and ETA",
             "Waits until every task is completed, failed or cancelled, then shows their table.",
             ("tm wait - < ids.txt", "tm wait ID --timeout 60")),
    "stats": ("queue, workers and peer link of every node",
              "Per node: queued, running, done, failed, workers live+pending/max (max: the effective limit),\n"
              "quota lent and borrowed, the peer link; a total row; the last scaling decisions.",
              ("tm stats", "tm stats --watch --interval 1", "tm --json stats")),
    "keys": ("make, list and revoke client keys (operator token in TM_TOKEN)",
             "With API_KEYS=required the task endpoints take a client key (tm and tmclient send\n"
             "TM_API_KEY). Keys are shared by both nodes; a revoked key is refused at once and stays listed.\n"
             "`create` prints the key once: keep it.",
             ("TM_TOKEN=$OPERATOR_TOKEN tm keys create --name ci", "tm keys list", "tm keys revoke 3f2a9c0d1e4b")),
    "pause": ("pause intake on every node (operator token in TM_TOKEN)",
              "Enqueues and retries answer 503 paused until `tm resume`; workers finish what is queued.",
              ("tm pause", "tm resume")),
    "resume": ("resume intake on every node (operator token in TM_TOKEN)",
               "Undoes `tm pause`.",
               ("tm resume",)),
    "purge": ("cancel every queued task on every node (operator token in TM_TOKEN)",
              "Shows how many tasks wait (scheduled ones too) and asks before it cancels them; running tasks\n"
              "run on. The purged tasks are `cancelled` with the reason `purged by the operator`.",
              ("tm purge", "tm purge --yes")),
    "active": ("the tasks each worker holds right now (operator token in TM_TOKEN)",
               "Both nodes are asked and their answers merged by worker (a worker pulls from both).",
               ("tm active", "tm --json active")),
    "bench": ("send tasks, report tasks/s and latency percentiles",
              "Sends random bodies, waits for them, and reports tasks per second of wall time and latency\n"
              "percentiles (completed_at - enqueued_at, as the node recorded them).",
              ("tm bench", "tm bench --tasks 600 -n 300000 --concurrency 8")),
}


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command (tm --json stats, tm stats --json).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", default=argparse.SUPPRESS, metavar="URLS",
                        help="comma-separated node URLs (default: $TM_NODES)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of a table")
    common.add_argument("--request-timeout", type=positive_float, default=argparse.SUPPRESS, metavar="S",
                        help="seconds for one HTTP request before trying the other node (default 10)")
    parser = argparse.ArgumentParser(prog="tm", description=__doc__, parents=[common],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str) -> argparse.ArgumentParser:
        summary, description, examples = COMMAND_HELP[name]
        return commands.add_parser(
            name, parents=[common], help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
            epilog="examples:\n" + "\n".join("  " + line for line in examples),
            formatter_class=argparse.RawDescriptionHelpFormatter)

    p = command("enqueue")
    p.add_argument("files", nargs="+", metavar="FILE", help="a file whose bytes are the task body, or - for stdin")
    p.add_argument("-n", "--iterations", type=positive_int, required=True, help="SHA-512 iterations per task")
    p.add_argument("--no-reuse", action="store_true",
                   help="compute every task, even when an identical task's result is kept")
    p.add_argument("--wait", action="store_true", help="then wait for the tasks with a progress bar, and show them")
    p.add_argument("--timeout", type=positive_float, metavar="S",
                   help="with --wait: give up after S seconds (default: no limit)")
    p.add_argument("--priority", type=priority, metavar="P", help="0 to 9, higher served first (default 0)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--countdown", type=positive_float, metavar="S", help="not run before S seconds from now")
    when.add_argument("--not-before", type=positive_float, metavar="T", help="not run before Unix time T")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--expires-in", type=positive_float, metavar="S",
                       help="failed `expired` if still queued S seconds from now")
    until.add_argument("--deadline", type=positive_float, metavar="T",
                       help="failed `expired` if still queued at Unix time T")

    p = command("status")
    p.add_argument("ids", nargs="+", metavar="ID", help="task ids, or - to read them from stdin")

    p = command("cancel")
    p.add_argument("ids", nargs="+", metavar="ID", help="task ids, or - to read them from stdin")

    p = command("retry")
    p.add_argument("ids", nargs="+", metavar="ID", help="task ids, or - to read them from stdin")
    p.add_argument("--no-reuse", action="store_true", help="compute them even when an identical result is kept")

    p = command("results")
    p.add_argument("--after", default="", metavar="CURSOR", help="the cursor a previous run printed (default: "
                   "from the oldest result kept)")
    p.add_argument("--cursor-file", metavar="FILE", help="start from the cursor kept in FILE (if it exists) and "
                   "keep the new one there after each page: each run prints only what is new")
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new results until Ctrl-C")
    p.add_argument("--poll", type=positive_float, default=1.0, metavar="S",
                   help="with --follow: seconds between asks (default 1)")

    p = command("pull")
    p.add_argument("--top", type=positive_int, default=10, metavar="N", help="how many (default 10)")

    p = command("wait")
    p.add_argument("ids", nargs="+", metavar="ID", help="task ids, or - to read them from stdin")
    p.add_argument("--timeout", type=positive_float, metavar="S",
                   help="give up after S seconds, exit code 3 (default: no limit)")

    p = command("stats")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=positive_float, default=2.0, metavar="S", help="--watch refresh (default 2)")

    p = command("keys")
    actions = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    made = actions.add_parser("create", help="make a key and print it (once)")
    made.add_argument("--name", default="", help="what the key is for (at most 100 characters)")
    actions.add_parser("list", help="every key, revoked ones too")
    revoked = actions.add_parser("revoke", help="revoke keys by id")
    revoked.add_argument("ids", nargs="+", metavar="KEY_ID")

    command("pause")
    command("resume")
    p = command("purge")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for a confirmation")
    command("active")

    p = command("bench")
    p.add_argument("-t", "--tasks", type=positive_int, default=100, metavar="N", help="tasks to send (default 100)")
    p.add_argument("-n", "--iterations", type=positive_int, default=1000, help="iterations per task (default 1000)")
    p.add_argument("--size", type=int, default=64, metavar="BYTES", help="random body size (default 64)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="parallel enqueue requests (default 4)")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="S", help="give up after S s (default 600)")
    return parser


def priority(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 9:
        raise argparse.ArgumentTypeError(f"expected a priority from 0 to 9, got {text!r}")
    return int(text)


def make_client(args: argparse.Namespace) -> Client:
    nodes = getattr(args, "nodes", None) or os.environ.get("TM_NODES", "")
    if not nodes.strip():
        raise UsageError("no node URLs: pass --nodes URL,URL or set TM_NODES (run_program.py --local prints the line)")
    try:
        # TM_TOKEN (an environment variable, never a flag, which ps would show): the operator token
        # of keys/pause/resume/purge/active, or ACTIONS_TOKEN for cancel and retry; the client key
        # (API_KEYS=required) comes from TM_API_KEY
        return Client(nodes, token=os.environ.get("TM_TOKEN", "").strip() or None,
                      timeout=getattr(args, "request_timeout", 10.0))
    except BadNodes as exc:
        raise UsageError(str(exc)) from None


def task_ids(given: list[str]) -> list[str]:
    """The ids given, where ``-`` stands for the ids on stdin (as ``tm enqueue`` prints them)."""
    ids: list[str] = []
    for item in given:
        ids.extend(sys.stdin.read().split() if item == "-" else [item])
    if not ids:
        raise UsageError("no task id given")
    return list(dict.fromkeys(ids))


def read_bodies(files: list[str]) -> list[bytes]:
    """Every body before anything is sent, so an unreadable file queues nothing."""
    if files.count("-") > 1:
        raise UsageError("'-' (stdin) may be given once")
    bodies = []
    for name in files:
        if name == "-":
            bodies.append(sys.stdin.buffer.read())
            continue
        try:
            with open(name, "rb") as handle:
                bodies.append(handle.read())
        except OSError as exc:
            raise TaskManagerError(f"cannot read {name}: {exc.strerror or exc}") from None
    return bodies


def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def wait_with_progress(client: Client, ids: list[str], timeout: float | None) -> dict[str, dict]:
    """Wait with a progress bar; returns each task's full status.

    A second bar counts iterations once a task reports progress (a long task's checkpoints)."""
    with render.progress_bars() as progress:
        bar = progress.add_task("tasks", total=len(ids))
        hashes: list = []

        def on_iterations(done_iterations: int, total: int) -> None:
            if not hashes and done_iterations and done_iterations < total:
                hashes.append(progress.add_task("iterations", total=total))
            if hashes:
                progress.update(hashes[0], completed=done_iterations, total=total)

        return client.wait(ids, timeout=timeout, on_progress=lambda n, total: progress.update(bar, completed=n),
                           on_iterations=on_iterations)


def show_tasks(args: argparse.Namespace, tasks: list[dict]) -> int:
    if getattr(args, "json", False):
        print_json(tasks)
    elif tasks:
        render.show(render.tasks_table(tasks))
    return failed_code(tasks)


def failed_code(tasks: list[dict]) -> int:
    """EXIT_FAILED (with its line on stderr) if a task failed or was cancelled, else EXIT_OK."""
    failed = [t["id"] for t in tasks if t.get("state") in UNFINISHED]
    if failed:
        print(f"tm: error: {len(failed)} of {len(tasks)} tasks failed or were cancelled", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def naming_the_file(exc: TaskManagerError, files: list[str]) -> TaskManagerError:
    """``exc`` with the task the node refused named by its file ("task 3: ..." becomes "b.txt: ...")."""
    inner = exc.error if isinstance(exc, EnqueueIncomplete) else exc
    if not isinstance(inner, ApiError):
        return exc
    index = inner.task_index if inner.task_index is not None else (0 if len(files) == 1 else None)
    if index is None or not 0 <= index < len(files):
        return exc
    name = "stdin" if files[index] == "-" else files[index]
    message = name + ": " + re.sub(r"^task \d+: ", "", inner.message)
    named = ApiError(inner.status, inner.code, message, inner.url)
    return EnqueueIncomplete(exc.ids, len(files), named) if isinstance(exc, EnqueueIncomplete) else named


def cmd_enqueue(client: Client, args: argparse.Namespace) -> int:
    bodies = read_bodies(args.files)
    quiet = getattr(args, "json", False)

    def queued(batch: list[str]) -> None:
        if not quiet:
            print("\n".join(batch), flush=True)

    timing = {"priority": args.priority, "countdown": args.countdown, "not_before": args.not_before,
              "expires_in": args.expires_in, "deadline": args.deadline}
    try:
        if len(bodies) == 1:
            ids = [client.enqueue(bodies[0], args.iterations, reuse=not args.no_reuse, **timing)]
            queued(ids)
        else:  # one request per batch of up to 1000 tasks
            ids = client.enqueue_many(bodies, args.iterations, reuse=not args.no_reuse, on_batch=queued, **timing)
    except (ApiError, EnqueueIncomplete) as exc:
        raise naming_the_file(exc, args.files) from None
    if not args.wait:
        if getattr(args, "json", False):
            print_json({"ids": ids})
        return EXIT_OK
    done = wait_with_progress(client, ids, args.timeout)
    if getattr(args, "json", False):
        print_json({"ids": ids, "tasks": list(done.values())})
        return EXIT_FAILED if any(t.get("state") in UNFINISHED for t in done.values()) else EXIT_OK
    return show_tasks(args, list(done.values()))


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    return act_on_each(args, client.status)


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    return act_on_each(args, client.cancel)


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    return act_on_each(args, lambda task_id: client.retry(task_id, reuse=not args.no_reuse))


def act_on_each(args: argparse.Namespace, action) -> int:
    """``tm status``/``tm cancel``/``tm retry``: act on every id, show the tasks it worked for,
    then one line per refusal; the exit code is that of the first refusal, else 4 if a task shown
    failed or was cancelled (``tm status`` only: cancel shows the tasks it cancelled)."""
    tasks, errors = [], []
    for task_id in task_ids(args.ids):
        try:
            tasks.append(action(task_id))
        except ApiError as exc:
            errors.append(exc)
    if getattr(args, "json", False):
        print_json(tasks)
    elif tasks:
        render.show(render.tasks_table(tasks))
    for exc in errors:
        _error(str(exc))
    if errors:
        return exit_code(errors[0])
    return failed_code(tasks) if args.command == "status" else EXIT_OK


def cmd_results(client: Client, args: argparse.Namespace) -> int:
    """Print each result once, oldest first; the cursor to go on from goes to stderr at the end
    (and to ``--cursor-file`` after each page). Ctrl-C as in ``tm stats --watch`` (see
    ``CtrlC``): the first ends after the page being read, printed and its cursor kept."""
    cursor = args.after
    kept = Path(args.cursor_file) if args.cursor_file else None
    if kept is not None and not cursor and kept.exists():
        cursor = kept.read_text().strip()
    as_json = getattr(args, "json", False)
    try:
        with CtrlC() as ctrl_c:
            while True:
                page = client.results_page(cursor, 1000)
                if as_json:
                    sys.stdout.write("".join(json.dumps(r) + "\n" for r in page["results"]))
                    sys.stdout.flush()
                elif page["results"]:
                    render.show(render.results_table(page["results"]))
                if page.get("missed"):
                    print(f"tm: {page['missed']} results were dropped (RESULTS_RETENTION) before they could be read",
                          file=sys.stderr)
                cursor = page["next"]
                if kept is not None:
                    keep_cursor(kept, cursor)
                if ctrl_c.pressed or (len(page["results"]) < 1000 and not args.follow):
                    break
                if len(page["results"]) < 1000:
                    ctrl_c.sleep(args.poll)
    except KeyboardInterrupt:  # Ctrl-C in the sleep, or a second one
        pass
    print(f"next: {cursor}   (go on with: tm results --after {cursor})", file=sys.stderr)
    return EXIT_OK


def keep_cursor(path: Path, cursor: str) -> None:
    """Write ``cursor`` to a file beside ``path``, then rename it over ``path``: interrupted, the
    file keeps its previous cursor whole (never empty or cut short)."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(cursor + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def cmd_pull(client: Client, args: argparse.Namespace) -> int:
    results = client.pull_completed(args.top)
    if getattr(args, "json", False):
        print_json(results)
    else:
        render.show(render.results_table(results))
    return EXIT_OK


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    done = wait_with_progress(client, task_ids(args.ids), args.timeout)
    return show_tasks(args, list(done.values()))


def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    if getattr(args, "json", False) and args.watch:
        raise UsageError("--watch redraws a table; use --json without --watch")
    if getattr(args, "json", False):
        print_json(client.stats())
        return EXIT_OK
    if not args.watch:
        render.show(render.stats_view(client.stats()))
        return EXIT_OK

    def view():
        try:
            return render.stats_view(client.stats())
        except NodesUnreachable as exc:
            return Text(f"{render.when(time.time())} {exc}", style="red")

    try:
        with CtrlC() as ctrl_c, Live(view(), console=render.console(), auto_refresh=False) as live:
            while not ctrl_c.pressed:
                ctrl_c.sleep(args.interval)
                if not ctrl_c.pressed:
                    live.update(view(), refresh=True)
    except KeyboardInterrupt:  # Ctrl-C in the sleep, or a second one
        pass
    return EXIT_OK


def cmd_bench(client: Client, args: argparse.Namespace) -> int:
    if args.size < 0:
        raise UsageError("--size must be >= 0")
    with render.progress_bars() as progress:
        sending = progress.add_task("sent", total=args.tasks)
        finished = progress.add_task("finished", total=args.tasks)
        report = run_bench(
            client, args.tasks, args.iterations, size=args.size, concurrency=args.concurrency, timeout=args.timeout,
            on_sent=lambda n: progress.advance(sending, n),
            on_progress=lambda done, total: progress.update(finished, completed=done),
        )
    if getattr(args, "json", False):
        print_json(report)
    else:
        lat = report["latency_seconds"]
        print(f"{report['completed']} tasks of {report['iterations']} iterations ({report['body_bytes']}-byte bodies) "
              f"in {report['wall_seconds']:.2f}s: {report['tasks_per_second']} tasks/s")
        print(f"enqueued in {report['enqueue_seconds']:.2f}s ({report['enqueued_per_second']} tasks/s, "
              f"concurrency {report['concurrency']})")
        print(f"latency (enqueued -> completed): p50 {lat['p50'] * 1000:.0f} ms, p90 {lat['p90'] * 1000:.0f} ms, "
              f"p99 {lat['p99'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms")
    if report["failed"]:
        print(f"tm: error: {report['failed']} tasks failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_keys(client: Client, args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    if args.keys_action == "create":
        made = client.create_key(args.name)
        if as_json:
            print_json(made)
        else:
            print(made["key"])
            note = "" if made.get("peer_informed") else " (the other node did not answer: it learns of it within 5 s)"
            print(f"tm: key {made['id']} made; it is shown only now{note}", file=sys.stderr)
        return EXIT_OK
    if args.keys_action == "list":
        keys = client.keys()
        if as_json:
            print_json(keys)
        else:
            render.show(render.keys_table(keys))
        return EXIT_OK
    revoked, errors = [], []
    for key_id in dict.fromkeys(args.ids):
        try:
            revoked.append(client.revoke_key(key_id))
        except ApiError as exc:
            errors.append(exc)
    if as_json:
        print_json(revoked)
    elif revoked:
        render.show(render.keys_table(revoked))
    for exc in errors:
        _error(str(exc))
    return EXIT_ERROR if errors else EXIT_OK


def cmd_pause(client: Client, args: argparse.Namespace) -> int:
    return show_intake(args, client.pause())


def cmd_resume(client: Client, args: argparse.Namespace) -> int:
    return show_intake(args, client.resume())


def show_intake(args: argparse.Namespace, answers: list[dict]) -> int:
    if getattr(args, "json", False):
        print_json(answers)
    for answer in [] if getattr(args, "json", False) else answers:
        print(f"{answer.get('node') or answer['url']}: intake {'paused' if answer['paused'] else 'open'}")
    return EXIT_OK


def cmd_purge(client: Client, args: argparse.Namespace) -> int:
    """Count what waits, ask, then purge every node; prints what each node cancelled."""
    nodes = [n for n in client.stats()["nodes"] if n.get("reachable")]
    waiting = sum(int(n.get("queued") or 0) + int(n.get("scheduled") or 0) for n in nodes)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"{waiting} queued tasks would be cancelled; pass --yes to purge without a terminal")
        answer = input(f"Cancel the {waiting} queued task(s) on {len(nodes)} node(s)? Running tasks run on. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("tm: nothing purged", file=sys.stderr)
            return EXIT_OK
    answers = client.purge()
    if getattr(args, "json", False):
        print_json(answers)
    else:
        for answer in answers:
            print(f"{answer.get('node') or answer['url']}: {answer['purged']} task(s) purged")
    return EXIT_OK


def cmd_active(client: Client, args: argparse.Namespace) -> int:
    workers = client.active()
    if getattr(args, "json", False):
        print_json(workers)
    elif workers:
        render.show(render.active_table(workers))
    else:
        print("no worker holds a task", file=sys.stderr)
    return EXIT_OK


COMMANDS = {
    "enqueue": cmd_enqueue, "status": cmd_status, "pull": cmd_pull,
    "cancel": cmd_cancel, "retry": cmd_retry, "results": cmd_results,
    "wait": cmd_wait, "stats": cmd_stats, "bench": cmd_bench,
    "keys": cmd_keys, "pause": cmd_pause, "resume": cmd_resume, "purge": cmd_purge, "active": cmd_active,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = make_client(args)
        return COMMANDS[args.command](client, args)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except WaitTimeout as exc:
        _error(str(exc))
        return EXIT_TIMEOUT
    except EnqueueIncomplete as exc:  # the ids queued were printed batch by batch
        _error(str(exc))
        return exit_code(exc.error)
    except TaskManagerError as exc:
        _error(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def exit_code(exc: TaskManagerError) -> int:
    """EXIT_PEER_UNAVAILABLE for a task that may be on the node that could not be asked, else EXIT_ERROR."""
    return EXIT_PEER_UNAVAILABLE if isinstance(exc, ApiError) and exc.code == "peer_unavailable" else EXIT_ERROR


def _error(message: str) -> None:
    print("tm: error: " + " ".join(message.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

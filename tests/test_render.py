"""Tables fit an 80-column terminal (one line per row, results cut with "…"); piped they stay whole."""

from __future__ import annotations

import time

from rich.console import Console

from tmclient.render import results_table, stats_view, tasks_table

RESULT = "0123456789abcdef" * 8  # 128 characters, as a SHA-512 hex digest


def lines_of(renderable, width: int = 80, terminal: bool = True) -> list[str]:
    con = Console(width=width, force_terminal=terminal, color_system=None, highlight=False)
    with con.capture() as captured:
        con.print(renderable)
    return captured.get().splitlines()


def twenty_tasks() -> list[dict]:
    now = time.time()
    tasks = [{"id": f"{i:032x}", "state": "completed", "iterations": 1_000_000, "enqueued_at": now - 5,
              "completed_at": now, "result": RESULT} for i in range(19)]
    tasks.append({"id": "f" * 32, "state": "failed", "iterations": 7, "enqueued_at": now, "completed_at": now,
                  "reason": "worker went down 5 times (MAX_ATTEMPTS=5)"})
    return tasks


def test_a_wait_table_of_20_tasks_is_21_lines_at_80_columns():
    lines = lines_of(tasks_table(twenty_tasks(), fit=True, width=80))
    assert len(lines) == 21 and all(len(line) <= 80 for line in lines)
    assert lines[0].split() == ["id", "state", "iterations", "completed", "result"]
    for i, line in enumerate(lines[1:20]):
        assert line.startswith(f"{i:032x}") and "completed" in line and "1000000" in line  # ids whole
        assert line.rstrip().endswith("…") and RESULT[:10] in line
    assert "failed" in lines[20] and "worker went" in lines[20]


def test_a_wide_terminal_shows_when_tasks_were_enqueued_too():
    lines = lines_of(tasks_table(twenty_tasks(), fit=True, width=160), width=160)
    assert len(lines) == 21 and "enqueued" in lines[0].split() and all(len(line) <= 160 for line in lines)


def test_piped_tables_keep_every_result_whole():
    lines = lines_of(tasks_table(twenty_tasks(), fit=False), width=240, terminal=False)
    assert len(lines) == 21 and sum(RESULT in line for line in lines) == 19 and "…" not in "".join(lines)
    results = [{"id": f"{i:032x}", "iterations": 3, "completed_at": time.time(), "result": RESULT} for i in range(5)]
    assert sum(RESULT in line for line in lines_of(results_table(results, fit=False), 240, terminal=False)) == 5
    fitted = lines_of(results_table(results, fit=True, width=80))
    assert len(fitted) == 6 and all(len(line) <= 80 and line.rstrip().endswith("…") for line in fitted[1:])


def test_the_stats_view_keeps_its_headers_whole_at_80_columns():
    def node(name: str, port: int, peer: bool | None) -> dict:
        return {"node": name, "url": f"http://127.0.0.1:{port}", "reachable": True, "queued": 123456, "running": 20,
                "completed": 1234567, "failed": 3, "workers": {"live": 10, "pending": 10, "max": 20},
                "quota": {"lent": 2, "borrowed": 1}, "peer": {"url": "x", "reachable": peer},
                "scaler": {"decisions": [{"at": time.time(), "reason": "oldest task waited 12.3s " + "x" * 80,
                                          "launched": 3, "borrowed": 1}]}}

    stats = {"nodes": [node("node-a", 8001, True), node("node-b", 8002, None)],
             "totals": {"queued": 246912, "running": 40, "completed": 2469134, "failed": 6,
                        "workers": {"live": 20, "pending": 20, "max": 40}}}
    lines = lines_of(stats_view(stats))
    assert all(len(line) <= 80 for line in lines)
    header = lines[1].split()
    assert header == ["node", "queued", "running", "done", "failed", "workers", "lent", "borrowed", "peer"]
    assert lines[2].split() == ["node-a", "123456", "20", "1234567", "3", "10+10/20", "2", "1", "reachable"]
    assert lines[4].split()[:6] == ["total", "246912", "40", "2469134", "6", "20+20/40"]
    assert "node-a http://127.0.0.1:8001" in lines[5] and "node-b http://127.0.0.1:8002" in lines[5]
    assert lines[-1].endswith("…")  # a long scaling decision is cut, not wrapped


def test_the_stats_view_shows_each_nodes_capacity_and_why_it_is_below_its_max():
    def node(name: str, capacity: int, why: str) -> dict:
        return {"node": name, "url": f"http://{name}", "reachable": True, "queued": 251, "running": 4,
                "completed": 9, "failed": 0, "quota": {}, "peer": {},
                "workers": {"live": 4, "pending": 0, "max": 10, "capacity": capacity, "capacity_why": why},
                "scaler": {"decisions": [{"at": time.time(), "reason": "backlog 9.0s of work, at capacity 4",
                                          "launched": 0, "borrowed": 0,
                                          "figures": {"live": 4, "pending": 0, "capacity": capacity}}]}}

    from tmclient.client import cluster_totals

    nodes = [node("node-a", 4, "TM_LOCAL_MAX_WORKERS=4"), node("node-b", 10, "MAX_NUM_OF_WORKERS")]
    lines = lines_of(stats_view({"nodes": nodes, "totals": cluster_totals(nodes)}), width=100)
    assert "live+pending/capacity" in lines[0]
    assert lines[2].split()[5] == "4+0/4" and lines[3].split()[5] == "4+0/10" and lines[4].split()[5] == "8+0/14"
    assert "node-a: capacity 4 of max 10: TM_LOCAL_MAX_WORKERS=4" in lines
    assert not any(line.startswith("node-b: capacity") for line in lines)
    assert any("at capacity 4 -> launched 0, borrowed 0 (workers 4+0/4)" in line for line in lines)

"""A Python client for the task manager's public API, with retries and fail-over between nodes.

    client = Client()          # the nodes of TM_NODES, as ``tm`` reads them; or Client("url1,url2")
    task_id = client.enqueue("hello", iterations=1000)      # str and bytes are the body itself
    done = client.wait([task_id], timeout=60)               # {id: status}, as ``status`` returns it
    print(done[task_id]["result"])

``enqueue`` and ``enqueue_many`` take the nodes in turn, so both queues (and both nodes' worker
quotas) get work; the other calls go to the node that last answered. When a node cannot be
reached (connection refused, timeout) or is shutting down, the call moves on to the next node,
and that node is tried last for the next ``COOLDOWN`` seconds; after a full round the client
backs off and tries again, ``retries`` times. Every task is sent with an idempotency key, so an
enqueue that timed out is sent again with the same key and is queued once. An HTTP error answer
raises ``ApiError`` with the server's ``error`` code and ``message``.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from tmcommon import batchwire

#: Task states after which a task never changes again (unless a client retries it).
FINAL_STATES = ("completed", "failed", "cancelled")
#: The node's defaults of MAX_BATCH_TASKS and MAX_BATCH_BYTES: ``enqueue_many`` splits at these.
BATCH_TASKS, BATCH_BYTES = 1000, 16 * 1024 * 1024

#: Figures that ``Client.stats`` adds up over the nodes.
_SUMMED = ("queued", "running", "completed", "failed", "enqueued")
#: Seconds a node that failed to answer is tried after the others.
COOLDOWN = 5.0
#: Unfinished tasks that ``Client.wait`` asks ``status`` of in each round, in turn.
_STATUS_PER_ROUND = 20
#: The environment variable that names the nodes when ``Client()`` is given none (as for ``tm``).
NODES_ENV = "TM_NODES"
#: Where ``Client`` and ``tm`` find the client key (X-Api-Key) by default.
API_KEY_ENV = "TM_API_KEY"
#: How a node names the task of a batch that it refused ("task 3: ...", 0-based in the batch).
_BATCH_TASK = re.compile(r"^task (\d+): ")


class TaskManagerError(Exception):
    """Base of every error this client raises."""


class ApiError(TaskManagerError):
    """A node answered with an HTTP error: ``status``, the server's ``code`` and ``message``.

    ``task_index`` is set when ``enqueue_many`` was refused because of one task: its index in
    the items given (the node's message names it by its place in the batch)."""

    def __init__(self, status: int, code: str, message: str, url: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" (HTTP {status} from {url})" if url else f" (HTTP {status})"))
        self.status, self.code, self.message, self.url = status, code, message, url
        self.task_index: int | None = None


class BadNodes(TaskManagerError, ValueError):
    """No node URL, or one that is not http(s)://."""


class BadBody(TaskManagerError, ValueError):
    """A task body that cannot be sent: an unreadable file, a text-mode file, another type."""


class NodesUnreachable(TaskManagerError):
    """No node could be reached after every retry."""


class EnqueueIncomplete(TaskManagerError):
    """``enqueue_many`` queued the first batches (``ids``), then ``error`` stopped it."""

    def __init__(self, ids: list[str], total: int, error: TaskManagerError) -> None:
        super().__init__(f"{len(ids)} of {total} tasks were queued, then: {error}")
        self.ids, self.error = ids, error


class WaitTimeout(TaskManagerError):
    """``wait`` ran out of time; ``done`` holds the tasks that finished, ``pending`` the others."""

    def __init__(self, done: dict[str, dict], pending: list[str], timeout: float) -> None:
        super().__init__(f"{len(pending)} of {len(done) + len(pending)} tasks not finished after {timeout:g}s")
        self.done, self.pending = done, pending


def parse_nodes(nodes: str | Iterable[str]) -> list[str]:
    """Node URLs from a list or a comma-separated string (as in TM_NODES); ``http://`` is assumed.

    Raises:
        BadNodes: none given, or one that is not http:// or https://.
    """
    items = nodes.split(",") if isinstance(nodes, str) else list(nodes)
    urls = []
    for item in items:
        item = item.strip().rstrip("/")
        if not item:
            continue
        if "://" not in item:
            item = "http://" + item
        if not item.startswith(("http://", "https://")):
            raise BadNodes(f"node URL must be http:// or https://, got {item!r}")
        urls.append(item)
    if not urls:
        raise BadNodes("no node URL given")
    return urls


def _read_data(data: bytes | bytearray | str | os.PathLike | BinaryIO) -> bytes:
    """The body of a task: bytes as they are, a str encoded as UTF-8 (a str is never taken for a
    file name), a path (``pathlib.Path``) or an open binary file read whole (so a retry can
    resend it)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, os.PathLike):
        try:
            return Path(data).read_bytes()
        except OSError as exc:
            raise BadBody(f"cannot read {os.fspath(data)}: {exc.strerror or exc}") from None
    if isinstance(data, io.TextIOBase):
        raise BadBody("open the file in binary mode ('rb')")
    if not callable(getattr(data, "read", None)):
        raise BadBody(f"a task body is bytes, str, a pathlib.Path or a binary file, not {type(data).__name__}")
    body = data.read()
    if not isinstance(body, (bytes, bytearray)):
        raise BadBody("open the file in binary mode ('rb')")
    return bytes(body)


class Client:
    """The task manager as one service, whichever node answers.

    Why one class with 19 public methods: it is the Python face of the API, one method per
    endpoint or command of ``tm`` (enqueue, status, wait, cancel, retry, results, stats, keys,
    pause, purge, active, ...), each a few lines over the shared request, fail-over and error
    handling; splitting it would make users import several objects for one service.

    Args:
        node_urls: the nodes' base URLs, a list or a comma-separated string; by default the
            ``TM_NODES`` environment variable, as for ``tm``.
        token: sent as X-Cluster-Token if given: the operator token for the operator's calls
            (``create_key``, ``pause``, ``purge``, ``active``, ...), or ACTIONS_TOKEN; public calls
            do not need it.
        api_key: the client key (X-Api-Key) of a cluster with API_KEYS=required; by default the
            ``TM_API_KEY`` environment variable, as for ``tm``.
        timeout: seconds for one HTTP request (connect and read each).
        retries: rounds over all nodes before ``NodesUnreachable``.
        backoff: seconds to wait after the first failed round; doubles each round, up to 5 s.
    """

    def __init__(
        self,
        node_urls: str | Iterable[str] | None = None,
        token: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        if node_urls is None:
            node_urls = os.environ.get(NODES_ENV, "")
            if not node_urls.strip():
                raise BadNodes(f"no node URLs: pass them to Client(...) or set {NODES_ENV}")
        self.node_urls = parse_nodes(node_urls)
        self.token = token
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip() or None
        self.timeout = timeout
        self.retries = max(1, retries)
        self.backoff = backoff
        self._preferred = 0  # the node that answered last
        self._turn = 0  # the node the next enqueue tries first
        self._down_until: dict[int, float] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # one requests.Session per thread
        self._sessions: list[requests.Session] = []

    # ------------------------------------------------------------ transport
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "tmclient"
            if self.token:
                session.headers["X-Cluster-Token"] = self.token
            if self.api_key:
                session.headers["X-Api-Key"] = self.api_key
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close the connections the client keeps alive (a node stopping then waits for none)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def _order(self, rotate: bool) -> list[int]:
        """Node indexes to try: from the preferred node (or the next in turn), failed ones last."""
        count = len(self.node_urls)
        with self._lock:
            first = self._turn if rotate else self._preferred
            if rotate:
                self._turn = (self._turn + 1) % count
            now = time.monotonic()
            order = [(first + i) % count for i in range(count)]
            return sorted(order, key=lambda i: self._down_until.get(i, 0.0) > now)

    def _mark_down(self, index: int) -> None:
        with self._lock:
            self._down_until[index] = time.monotonic() + COOLDOWN

    def _request(self, method: str, path: str, *, rotate: bool = False, **kwargs: Any) -> requests.Response:
        """Send to the preferred node (with ``rotate``, to the next node in turn), failing over
        and backing off; raise on an HTTP error. Every call is safe to repeat: enqueues carry an
        idempotency key."""
        problems: list[str] = []
        delay = self.backoff
        for attempt in range(self.retries):
            if attempt:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            for index in self._order(rotate=rotate):
                url = self.node_urls[index]
                try:
                    response = self._session().request(method, url + path, timeout=self.timeout, **kwargs)
                except requests.ConnectionError as exc:
                    self._mark_down(index)
                    problems.append(f"{url}: {_short(exc)}")
                    continue
                except requests.Timeout:
                    self._mark_down(index)
                    problems.append(f"{url}: no answer within {self.timeout:g}s")
                    continue
                if response.status_code == 503 and _error_code(response) == "shutting_down":
                    self._mark_down(index)
                    problems.append(f"{url}: shutting down")
                    continue
                with self._lock:
                    self._preferred = index
                    self._down_until.pop(index, None)
                if response.status_code >= 400:
                    raise _api_error(response)
                return response
        raise NodesUnreachable("no node answered: " + "; ".join(problems[-len(self.node_urls):]))

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "bad_response", "the answer is not JSON", response.url) from None

    # ---------------------------------------------------------------- calls
    def enqueue(self, data: bytes | str | os.PathLike | BinaryIO, iterations: int, *, key: str | None = None,
                reuse: bool = True, **timing: Any) -> str:
        """Queue one task; ``data`` is the body (bytes, or a str sent as UTF-8), a
        ``pathlib.Path`` or a binary file to read it from. Returns the task id.

        ``key`` is its idempotency key (a new random one by default): sending the same key again
        gives the same id and queues nothing. ``reuse=False`` computes it even when an identical
        task's result is kept. ``priority`` (0-9, higher first), ``not_before`` (Unix time) or
        ``countdown`` (seconds), ``deadline`` (Unix time) or ``expires_in`` (seconds): see
        docs/api.md, "Priorities and times".
        """
        body = _read_data(data)
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        params = {"iterations": iterations, **({} if reuse else {"reuse": 0}), **timing_params(**timing)}
        return self._json("PUT", "/enqueue", params=params, data=body, headers=headers, rotate=True)["id"]

    def enqueue_file(self, path: str | os.PathLike, iterations: int, **options: Any) -> str:
        """Queue one task whose body is the file at ``path`` (``BadBody`` if it cannot be read)."""
        return self.enqueue(Path(path), iterations, **options)

    def enqueue_many(self, items: Iterable, iterations: int | None = None, *, reuse: bool = True,
                     on_batch: Callable[[list[str]], None] | None = None, **timing: Any) -> list[str]:
        """Queue many tasks with few requests (``PUT /enqueue_batch``); returns their ids in order.

        ``items`` are bodies (bytes, str, paths or binary files) that all take ``iterations``, or
        ``(body, iterations)`` pairs. They go in batches of at most ``BATCH_TASKS`` tasks and
        ``BATCH_BYTES`` bytes, each queued whole or not at all, each task with its own
        idempotency key. ``on_batch(ids)`` is called after each batch. ``priority`` and the
        times of ``enqueue`` apply to every task.

        Raises:
            EnqueueIncomplete: a batch failed after earlier ones were queued (their ids attached).
            ApiError, NodesUnreachable: the first batch failed; nothing was queued. An
                ``ApiError`` about one task has its index in ``items`` in ``task_index``.
            BadBody: an item cannot be read; nothing was queued.
        """
        params = {**({} if reuse else {"reuse": 0}), **timing_params(**timing)}
        tasks = [(_read_data(item), iterations) if iterations is not None else (_read_data(item[0]), item[1])
                 for item in items]
        batches: list[list[tuple[bytes, int, str]]] = [[]]
        size = 8
        for body, count in tasks:
            key = uuid.uuid4().hex
            task_size = batchwire.encoded_size(len(body), key)
            if batches[-1] and (len(batches[-1]) >= BATCH_TASKS or size + task_size > BATCH_BYTES):
                batches.append([])
                size = 8
            batches[-1].append((body, count, key))
            size += task_size
        ids: list[str] = []
        for batch in batches if tasks else []:
            try:
                answer = self._json("PUT", "/enqueue_batch", params=params,
                                    data=batchwire.encode(batch), rotate=True,
                                    headers={"Content-Type": batchwire.CONTENT_TYPE})
            except TaskManagerError as exc:
                if isinstance(exc, ApiError) and (named := _BATCH_TASK.match(exc.message)):
                    exc.task_index = len(ids) + int(named.group(1))
                if ids:
                    raise EnqueueIncomplete(ids, len(tasks), exc) from exc
                raise
            ids += answer["ids"]
            if on_batch is not None:
                on_batch(answer["ids"])
        return ids

    def cancel(self, task_id: str) -> dict:
        """Cancel a queued or running task; returns its status (``cancelled``)."""
        return self._json("POST", f"/cancel/{task_id}")

    def retry(self, task_id: str, *, reuse: bool = True) -> dict:
        """Queue a failed or cancelled task again under its id; returns its status."""
        return self._json("POST", f"/retry/{task_id}", params={} if reuse else {"reuse": 0})

    # ------------------------------------------------------------- operator
    def keys(self) -> list[dict]:
        """The cluster's client keys (revoked ones too): ``[{"id", "name", "created_at", "revoked_at"}]``."""
        return self._json("GET", "/keys")["keys"]

    def create_key(self, name: str = "") -> dict:
        """A new client key: ``{"id", "name", "created_at", "key", "peer_informed"}``; ``key``
        is shown only this once."""
        return self._json("POST", "/keys", json={"name": name})

    def revoke_key(self, key_id: str) -> dict:
        """Revoke a client key on both nodes; returns it as ``keys`` lists it."""
        return self._json("POST", f"/keys/{quote(key_id, safe='')}/revoke")

    def pause(self) -> list[dict]:
        """Pause intake on every node (enqueues answer 503 ``paused``): ``[{"url", "node", "paused", "since"}]``."""
        return self._on_each("POST", "/pause")

    def resume(self) -> list[dict]:
        """Resume intake on every node."""
        return self._on_each("POST", "/resume")

    def purge(self) -> list[dict]:
        """Cancel every queued task on every node: ``[{"url", "node", "purged"}]``."""
        return self._on_each("POST", "/purge")

    def active(self) -> list[dict]:
        """What each worker holds right now on the nodes that answered, merged by worker id:
        ``[{"id", "tasks": [{"id", "node", "iterations", "done", "priority", "held_seconds"}]}]``."""
        workers: dict[str, list] = {}
        for answer in self._on_each("GET", "/active"):
            for worker in answer.get("workers", []):
                workers.setdefault(worker["id"], []).extend({**t, "node": answer.get("node")} for t in worker["tasks"])
        return [{"id": w, "tasks": tasks} for w, tasks in sorted(workers.items())]

    def _on_each(self, method: str, path: str) -> list[dict]:
        """The same call on every node (no fail-over: each node acts for itself).

        Raises:
            ApiError: a node refused (the first refusal; wrong token, ...).
            NodesUnreachable: some node could not be reached (those that could have acted).
        """
        answers, problems = [], []
        for url in self.node_urls:
            try:
                response = self._session().request(method, url + path, timeout=self.timeout)
            except requests.RequestException as exc:
                problems.append(f"{url}: {_short(exc)}")
                continue
            if response.status_code >= 400:
                raise _api_error(response)
            answers.append({"url": url, **response.json()})
        if problems:
            done = f" ({len(answers)} other node(s) did)" if answers else ""
            raise NodesUnreachable("not done on every node: " + "; ".join(problems) + done)
        return answers

    def results_page(self, after: str | None = None, limit: int = 100) -> dict:
        """``{"results": [...], "next": cursor, "missed": n}``: results of the whole cluster
        completed after the cursor ``after`` (from the oldest kept), oldest first."""
        return self._json("GET", "/results", params={"after": after or "", "limit": limit})

    def results(self, after: str | None = None, *, follow: bool = False, limit: int = 100,
                poll: float = 1.0, stop: threading.Event | None = None) -> Iterator[dict]:
        """Every result completed after the cursor ``after``, each once, oldest first. Stops
        when all are read, or with ``follow`` waits ``poll`` seconds and reads on until ``stop``
        is set (for ever without one)."""
        cursor = after or ""
        stop = stop or threading.Event()
        while True:
            page = self.results_page(cursor, limit)
            yield from page["results"]
            cursor = page["next"]
            if len(page["results"]) < limit and (not follow or stop.wait(poll)):
                return

    def status(self, task_id: str) -> dict:
        """``{"id", "state", "iterations", "enqueued_at", "result"?, "completed_at"?, ...}``."""
        return self._json("GET", f"/status/{task_id}")

    def pull_completed(self, top: int) -> list[dict]:
        """The ``top`` newest results of the cluster, newest first."""
        return self._json("POST", "/pullCompleted", params={"top": top})

    def wait(
        self,
        ids: Sequence[str],
        timeout: float | None = None,
        *,
        poll: float = 0.25,
        on_progress: Callable[[int, int], None] | None = None,
        on_iterations: Callable[[int, int], None] | None = None,
    ) -> dict[str, dict]:
        """Wait until every task is completed, failed or cancelled; returns ``{id: status}`` in
        ``ids`` order, each status as ``status(id)`` gives it.

        Each round reads the newest results in one call (cheap for many tasks), then asks
        ``status`` of a few unfinished tasks in turn, which also notices failed ones; a task
        seen among the newest results is asked its full status once, at the end.
        ``on_progress(finished, total)`` is called after every round, and
        ``on_iterations(done, total)`` with the iterations of the tasks whose size is known so
        far (a long running task counts what its newest checkpoint says is done).

        Raises:
            WaitTimeout: ``timeout`` seconds passed first (``done`` and ``pending`` attached).
            ApiError: a task id is unknown to both nodes (``unknown_task``).
        """
        wanted = list(dict.fromkeys(ids))
        done: dict[str, dict] = {}
        iterations: dict[str, tuple[int, int]] = {}  # id -> (done, total), as last seen
        deadline = None if timeout is None else time.monotonic() + timeout
        turn = 0
        while True:
            pending = [i for i in wanted if i not in done]
            if pending:
                pending_set = set(pending)
                for item in self.pull_completed(min(len(pending) * 2 + 20, 10_000)):
                    if item.get("id") in pending_set:
                        done[item["id"]] = {**item, "state": "completed"}
                        iterations[item["id"]] = (item.get("iterations", 0), item.get("iterations", 0))
                pending = [i for i in wanted if i not in done]
                start = turn % len(pending) if pending else 0
                for task_id in (pending[start:] + pending[:start])[:_STATUS_PER_ROUND]:
                    status = self.status(task_id)
                    total = int(status.get("iterations", 0))
                    if status.get("state") in FINAL_STATES:
                        done[task_id] = status
                        iterations[task_id] = (total, total)
                    else:
                        iterations[task_id] = (int(status.get("done", 0)), total)
                turn += _STATUS_PER_ROUND
                pending = [i for i in wanted if i not in done]
            if on_progress is not None:
                on_progress(len(wanted) - len(pending), len(wanted))
            if on_iterations is not None:
                on_iterations(sum(d for d, _ in iterations.values()), sum(t for _, t in iterations.values()))
            if not pending:
                return self._full_statuses({i: done[i] for i in wanted})
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout({i: done[i] for i in wanted if i in done}, pending, timeout or 0)
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def _full_statuses(self, done: dict[str, dict]) -> dict[str, dict]:
        """``done`` with each entry taken from the newest results replaced by the task's status."""
        partial = [task_id for task_id, task in done.items() if "enqueued_at" not in task]
        if partial:
            with ThreadPoolExecutor(max_workers=min(8, len(partial))) as pool:
                done.update(zip(partial, pool.map(self.status, partial), strict=True))
        return done

    def stats(self) -> dict:
        """The whole cluster: ``{"nodes": [...], "totals": {...}}``.

        Every node is asked (no fail-over); a node that does not answer is listed with
        ``"reachable": false`` and an ``"error"``. Totals add up the nodes that answered.

        Raises:
            NodesUnreachable: no node answered.
        """
        nodes = []
        for url in self.node_urls:
            try:
                response = self._session().get(url + "/stats", timeout=self.timeout)
                if response.status_code >= 400:
                    raise _api_error(response)
                nodes.append({"url": url, "reachable": True, **response.json()})
            except (requests.RequestException, ValueError, ApiError) as exc:
                nodes.append({"url": url, "reachable": False, "error": _short(exc)})
        if not any(n["reachable"] for n in nodes):
            raise NodesUnreachable("no node answered: " + "; ".join(f"{n['url']}: {n['error']}" for n in nodes))
        return {"nodes": nodes, "totals": cluster_totals([n for n in nodes if n["reachable"]])}


def cluster_totals(nodes: list[dict]) -> dict:
    """Add up the per-node ``/stats`` figures (queued, running, completed, failed, workers)."""
    totals: dict[str, Any] = {key: sum(int(n.get(key) or 0) for n in nodes) for key in _SUMMED}
    totals["workers"] = {
        key: sum(int((n.get("workers") or {}).get(key) or 0) for n in nodes) for key in ("live", "pending", "max")
    }
    totals["workers"]["capacity"] = sum(capacity(n.get("workers") or {}) for n in nodes)
    return totals


def capacity(workers: dict) -> int:
    """A node's ``/stats`` workers: how many it can run at once (``max`` from a node that does not say)."""
    return int(workers.get("capacity", workers.get("max")) or 0)


def timing_params(priority: int | None = None, not_before: float | None = None, countdown: float | None = None,
                  deadline: float | None = None, expires_in: float | None = None) -> dict:
    """The query parameters of a task's priority and times (those given)."""
    given = {"priority": priority, "not_before": not_before, "countdown": countdown, "deadline": deadline,
             "expires_in": expires_in}
    return {name: value for name, value in given.items() if value is not None}


def _error_code(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return body.get("error", "") if isinstance(body, dict) else ""


def _api_error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return ApiError(response.status_code, str(body["error"]), str(body.get("message", "")), response.url)
    text = " ".join(response.text.split())[:200]
    return ApiError(response.status_code, "http_error", text or response.reason or "", response.url)


def _short(exc: BaseException) -> str:
    """A one-line reason for a connection error (requests' messages nest several exceptions)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return (exc.__class__.__name__ + ": " + text)[:160] if text else exc.__class__.__name__

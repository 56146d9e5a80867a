"""The worker loop: claim from the own node first, then the peer; compute; post results in batches.

A batch is as many tasks as add up to about ``claim_seconds`` of work at this worker's measured
hash rate, so small tasks cost one claim and one result post per batch, while long tasks are
claimed one at a time and their leases renewed by a heartbeat thread. ``request_stop()`` (wired
to SIGTERM) makes the loop finish the task in hand, give the rest back, and exit.

A long task is computed in slices of about ``slice_seconds``: after each, the worker keeps a
checkpoint (iterations done, digest) that the heartbeat sends to the node, and a task claimed
with a checkpoint continues from it. ``evacuate()`` (a spot interruption notice) stops at the
next slice and hands every task back at once with its checkpoint. The own node refusing a
call (``NodeRejected``: wrong token, bad request) ends the loop with ``exitcodes.REJECTED``
after a goodbye to every node that still listens; the peer refusing one (two nodes set up with
different tokens) is logged once and the worker goes on for its own node only, so that its node
does not launch it again and again. Any other exception in
a lane (a broken process pool, a bug) stops every lane the same way, hands back the tasks that
lane held and ends with ``exitcodes.FAILED``: a worker never holds a task it is not computing.

With ``lanes`` > 1 (``workerapp/lanes.py``) the loop runs in that many threads, each claiming
about ``claim_seconds`` of work at one lane's rate when it is free, so waiting work stays in the
queue and no lane sits on a backlog while another idles. Tasks that stopping leaves unstarted
are handed back once, after every lane has finished the task in hand. Claims carry the
worker's measured rate (all lanes), engine and lanes for the node's scaler and ``/stats``.

When the engine computes several chains at once (``compute_many``: the native engine's vector
lanes, ``width`` chains per call), a lane's tasks run together in rounds (``workerapp/rounds.py``):
each round is one call, a slice of every started chain plus short tasks that fit, with the same
checkpoints, heartbeats, cancel and evacuation as above, per task. Results are posted after each
round, and lanes that a finished chain freed are refilled by a claim from the same node. Such a
claim asks for at most as many tasks as there are free lanes until a claim shows the tasks to be
shorter than a slice: long tasks then spread over the workers instead of queueing behind one.

Each result carries the digests at its task's marks (``tmcommon/marks.py``), so that the node can
recompute any one segment of the chain alone (``docs/verification.md``): slices and rounds end at
marks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tmcommon.cpus import cpu_model
from tmcommon.marks import positions
from workerapp import exitcodes
from workerapp.client import Checkpoint, ClaimedTask, NodeClient, NodeRejected, NodeUnavailable
from workerapp.compute import chain, compute
from workerapp.lanes import measure_lanes
from workerapp.rounds import Chain, LaneBatch
from workerapp.marks import next_stop

log = logging.getLogger(__name__)
#: What ``_compute`` returns for a task the node said to stop.
_DROPPED = ""


@dataclass
class _Source:
    """A node and when it may be asked again after failures (capped exponential backoff)."""

    client: NodeClient
    retry_at: float = 0.0
    backoff: float = 0.0
    failures: int = 0
    refused: NodeRejected | None = None  # the peer refused a call: not asked again


@dataclass
class _Holding:
    """Tasks claimed from one node and not yet reported, for the heartbeat thread."""

    source: _Source | None = None
    task_ids: list[str] = field(default_factory=list)
    lease_seconds: float = 30.0
    since: float = 0.0
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)


class Worker:
    """The worker loop: claim, compute in rounds, heartbeat, post, hand back, say goodbye.

    Why one class of this size (4 public methods, long private ones): every step reads and
    changes what this worker holds (leases, checkpoints, the sources' back-off), under one lock
    shared with the heartbeat thread. The parts that do not are their own modules: the rounds
    of the vector lanes (``rounds.py``), lanes and rate (``lanes.py``), the HTTP calls
    (``client.py``), the engine (``engine.py``), marks, faults and spot notices.

    Args:
        nodes: own node first, then the peer.
        idle_seconds: exit after this long without a task from any node.
        claim_seconds: how much work (at the measured rate) to claim at once.
        max_batch: at most this many tasks per claim.
        hash_rate: iterations per second of one lane; measured at start (all lanes at once) when None.
        lanes: chains computed at once, each in its own thread (``compute_fn`` must let them run
            in parallel: ``lanes.lane_compute``).
        engine: the engine's name, reported to the nodes.
        kernel: the engine's kernel (``Engine.kernel``: avx512, avx2, ...), reported to the nodes;
            "" for none (the hashlib loop).
        compute_many: computes several chains at once (the native engine's vector lanes).
        width: how many chains ``compute_many`` runs at once; ``hash_rate`` is then the rate of
            all of them together.
        spot: runs on a spot instance (reported to the nodes).
        slice_seconds: a long task is computed (and checkpointed) in slices of about this long.
        clock: monotonic seconds, for backoff, leases and idleness.
        sleep: when given, every wait of the loop calls it (tests pass one that advances a fake
            clock); by default polls wait on the stop request and retries on ``time.sleep``.
    """

    def __init__(
        self,
        nodes: list[NodeClient],
        *,
        idle_seconds: float = 60.0,
        claim_seconds: float = 1.0,
        max_batch: int = 256,
        hash_rate: float | None = None,
        min_poll: float = 0.02,
        max_poll: float = 0.1,
        max_poll_others: float = 0.5,
        max_backoff: float = 5.0,
        compute_fn: Callable[[bytes, int], str] = compute,
        slice_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        lanes: int = 1,
        engine: str = "python",
        kernel: str = "",
        compute_many: Callable[[list[tuple[bytes, int]]], list[str]] | None = None,
        width: int = 1,
        spot: bool = False,
    ) -> None:
        if not nodes:
            raise ValueError("a worker needs at least one node")
        self.sources = [_Source(node) for node in nodes]
        self.idle_seconds = idle_seconds
        self.claim_seconds = claim_seconds
        self.max_batch = max_batch
        self.hash_rate = hash_rate
        self.min_poll, self.max_poll, self.max_backoff = min_poll, max_poll, max_backoff
        self.max_poll_others = max(max_poll, max_poll_others)
        self.compute_fn = compute_fn
        self.slice_seconds = slice_seconds
        self._clock, self._sleep = clock, sleep
        self.lanes, self.engine, self.kernel = lanes, engine, kernel
        self.compute_many, self.width = (compute_many, width) if compute_many and width > 1 else (None, 1)
        self._wide_claims = dict.fromkeys(range(lanes), False)  # see _claim_size
        self.spot = spot
        self.total_rate: float | None = None if hash_rate is None else hash_rate * lanes
        self.completed = 0
        self.iterations_computed = 0  # hashes this worker did itself (not those of checkpoints it resumed)
        self._evacuate = threading.Event()
        self._dropped: set[str] = set()  # tasks the node said to stop (cancelled): neither posted nor handed back
        self.rejection: NodeRejected | None = None
        self.failure: BaseException | None = None  # the unexpected error that stopped a lane
        self._stop = threading.Event()
        self._work_seen = threading.Event()  # a lane claimed work: the idle ones ask at once (see _loop)
        self._finished = threading.Event()  # the heartbeat thread runs until run() ends, past a stop
        self._holdings = {lane: _Holding() for lane in range(lanes)}
        self._holding_lock = threading.Lock()  # holdings, counters, hand-backs
        self._returns: list[tuple[_Source, list[str], dict[str, Checkpoint]]] = []
        self._last_task = 0.0
        self._marks: dict[str, list[str]] = {}  # task id -> digests at its marks, until posted

    # ------------------------------------------------------------- control
    def request_stop(self) -> None:
        """Finish the task in hand, give the rest back, call worker_down, exit (SIGTERM)."""
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        self._work_seen.set()  # the idle lanes wait on it

    def evacuate(self, notice: object = None) -> None:
        """The machine goes away (spot interruption): stop computing at the next slice, hand
        every task held back at once with its checkpoint, call worker_down, exit."""
        log.warning("evacuating (%s): handing back every task held", notice)
        self._evacuate.set()
        self._halt()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ---------------------------------------------------------------- loop
    def run(self) -> int:
        """Work until idle for ``idle_seconds``, stopped, rejected or failed; returns the exit code
        (``exitcodes.OK``, ``exitcodes.REJECTED`` with the refusal in ``self.rejection``, or
        ``exitcodes.FAILED`` with the error in ``self.failure``)."""
        if self.hash_rate is None:
            self.hash_rate, self.total_rate = measure_lanes(self.compute_fn, self.lanes, compute_many=self.compute_many,
                                                            width=self.width)
        for source in self.sources:
            source.client.report = {"rate": round(self.total_rate), "engine": self.engine, "lanes": self.lanes,
                                    "cpu": cpu_model(), "spot": self.spot}
            if self.kernel:
                source.client.report["kernel"] = self.kernel
        heartbeats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeats.start()
        own = self.sources[0].client
        log.info("worker %s started: nodes %s, %d lane(s), %s engine%s, %.0f iterations/s", own.worker_id,
                 ", ".join(s.client.url for s in self.sources), self.lanes, self.engine,
                 f" ({self.kernel} kernel)" if self.kernel else "", self.total_rate)
        self._last_task = self._clock()
        if self.lanes == 1:
            self._lane(0)
        else:
            threads = [threading.Thread(target=self._lane, args=(lane,), name=f"lane-{lane}")
                       for lane in range(self.lanes)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        code = exitcodes.OK
        if self.rejection is not None:
            code = exitcodes.REJECTED
            log.error("a node refused a call: %s. Retrying would not help (check CLUSTER_TOKEN, and that node "
                      "and worker run the same version); exiting with code %d", self.rejection, code)
        elif self.failure is not None:
            code = exitcodes.FAILED
            log.error("exiting with code %d after an unexpected error (logged above); every task held is "
                      "handed back", code)
        self._give_back_all()
        self._say_goodbye(everywhere=code != exitcodes.OK or any(s.refused for s in self.sources))
        self._finished.set()
        heartbeats.join(timeout=2)
        log.info("worker %s exiting after %d task(s), %d iterations computed", own.worker_id, self.completed,
                 self.iterations_computed)
        return code

    def _lane(self, lane: int) -> None:
        """One lane's loop; a refusal by a node, or any unexpected error, stops every lane."""
        try:
            self._loop(lane)
        except NodeRejected as exc:
            with self._holding_lock:
                self.rejection = self.rejection or exc
            self._halt()
        except Exception as exc:
            log.exception("lane %d failed: %s; handing back its tasks and stopping", lane, exc)
            with self._holding_lock:
                self.failure = self.failure or exc
            self._halt()

    def _loop(self, lane: int = 0) -> None:
        """Claim and compute until stopped or idle. An idle lane asks again after a wait that
        doubles from ``min_poll``: up to ``max_poll`` for lane 0, so that new work waits little
        for an idle worker (its start is what the wall time of a burst of long tasks varies by),
        and up to ``max_poll_others`` for the other lanes, which a lane that finds work wakes."""
        poll = self.min_poll
        ceiling = self.max_poll if lane == 0 else self.max_poll_others
        while not self._stop.is_set():
            if self._work_once(lane):
                self._last_task, poll = self._clock(), self.min_poll
                continue
            if self._clock() - self._last_task >= self.idle_seconds and not self._busy():
                if lane == 0:
                    log.info("idle for %.1fs: exiting", self.idle_seconds)
                return
            if lane == 0 or self._sleep is not None:
                self._wait(poll, until_stop=True)
            else:
                self._work_seen.clear()  # none left for this lane: wait for the next find
                self._work_seen.wait(poll)
            poll = min(poll * 2, ceiling)

    def _busy(self) -> bool:
        """Some lane holds tasks (the worker is not idle while one lane still computes)."""
        with self._holding_lock:
            return any(holding.source for holding in self._holdings.values())

    def _wait(self, seconds: float, *, until_stop: bool = False) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
        elif until_stop:
            self._stop.wait(seconds)
        else:
            time.sleep(seconds)

    def _claim_size(self, lane: int, free: int) -> tuple[int, int]:
        """(max tasks, max iterations) of a claim for ``free`` idle vector lanes: one task per
        lane, unless the last claim of this lane brought only tasks shorter than a slice: then
        ``max_batch`` tasks of about ``claim_seconds`` of the free lanes' work."""
        if self.width > 1 and not self._wide_claims[lane]:
            return min(free, self.max_batch), max(1, int(self.hash_rate * self.claim_seconds))
        return self.max_batch, max(1, int(self.hash_rate * free / self.width * self.claim_seconds))

    def _claimed(self, lane: int, tasks: list[ClaimedTask]) -> None:
        """Note whether the tasks just claimed were all shorter than a slice (see ``_claim_size``)."""
        self._wide_claims[lane] = bool(tasks) and all(t.iterations <= self._step() for t in tasks)

    def _step(self) -> int:
        """Iterations of one chain in a slice."""
        return max(1, int(self.hash_rate / self.width * self.slice_seconds))

    def _work_once(self, lane: int = 0) -> bool:
        """Ask each node in order for a batch; process the first one found. True if any task ran."""
        max_tasks, budget = self._claim_size(lane, self.width)
        for source in self.sources:
            if self._stop.is_set():
                return False
            if self._clock() < source.retry_at or source.refused:
                continue
            try:
                tasks, lease = source.client.claim(max_tasks, budget)
            except NodeUnavailable as exc:
                self._failed(source, exc)
                continue
            except NodeRejected as exc:
                self._refused(source, exc)
                continue
            self._recovered(source)
            self._claimed(lane, tasks)
            if tasks:
                if self.lanes > 1:
                    self._work_seen.set()  # there may be more: the idle lanes ask now
                self._process(source, tasks, lease, lane)
                return True
        return False

    def _process(self, source: _Source, tasks: list[ClaimedTask], lease: float, lane: int = 0) -> None:
        with self._holding_lock:
            self._holdings[lane] = _Holding(source, [t.id for t in tasks], lease, self._clock())
        results: list[tuple[str, str, list[str]]] = []
        returned: list[str] = []
        i = 0
        try:
            try:
                if self.compute_many:
                    returned = self._run_rounds(source, tasks, lease, lane)
                else:
                    for i, task in enumerate(tasks):
                        digest = None if self._stop.is_set() else self._compute(task, lane)
                        if digest is None:  # stopping, or evacuated half-way through this one
                            returned = [t.id for t in tasks[i:]]
                            break
                        if digest != _DROPPED:
                            results.append((task.id, digest, self._marks.pop(task.id, [])))
            except Exception:  # the lane stops (see _lane): the tasks not computed go back
                with self._holding_lock:
                    returned = list(self._holdings[lane].task_ids) if self.compute_many else [t.id for t in tasks[i:]]
                raise
            finally:  # what was computed is still worth posting
                if results:
                    self._post_results(source, results, lease)
        finally:  # also when the node refused the results, or a lane failed
            with self._holding_lock:
                checkpoints = {i: c for i, c in self._holdings[lane].checkpoints.items() if i in returned}
                self._holdings[lane] = _Holding()
                self._dropped.difference_update(t.id for t in tasks)  # a stop that came too late
                for task in tasks:
                    self._marks.pop(task.id, None)
                if returned:  # handed back by run() once every lane has stopped
                    self._returns.append((source, returned, checkpoints))

    def _run_rounds(self, source: _Source, tasks: list[ClaimedTask], lease: float, lane: int) -> list[str]:
        """Compute ``tasks`` (and those claimed to refill freed lanes) round by round with
        ``compute_many``, posting results after each round. Returns the ids to hand back:
        every chain not ended when evacuating, the unstarted ones when stopping."""
        batch = LaneBatch(self.width, self._step())
        seen = {t.id for t in tasks}
        ended, more = self._add(batch, tasks), True  # more: the node may have tasks to refill lanes with
        try:
            while True:
                if ended:
                    self._post_results(source, [(c.task.id, c.digest, c.marks) for c in ended], lease)
                with self._holding_lock:
                    self._holdings[lane].task_ids = batch.ids()
                    dropped = self._dropped & set(batch.ids())
                if self._evacuate.is_set() or not batch:
                    return batch.ids()
                for chain in batch.drop(dropped):
                    log.info("task %s stopped at %d of %d iterations: the node says it was cancelled",
                             chain.task.id, chain.done, chain.task.iterations)
                ended = []
                if more and not self._stop.is_set() and batch.free_lanes():
                    claimed = self._refill(source, batch, lane)
                    more = bool(claimed)
                    seen.update(t.id for t in claimed)
                    ended = self._add(batch, claimed)
                planned = batch.plan(start=not self._stop.is_set())
                if not planned:  # stopping: hand back the unstarted ones
                    return batch.ids()
                digests = self.compute_many([chain.job(n) for chain, n in planned])
                done = batch.record(planned, digests)
                with self._holding_lock:
                    self.iterations_computed += sum(n for _, n in planned)
                    self._holdings[lane].checkpoints = batch.checkpoints()
                    ended += [c for c in done if c.task.id not in self._dropped]  # else cancelled meanwhile
        finally:
            with self._holding_lock:
                self._dropped -= seen

    def _add(self, batch: LaneBatch, tasks: list[ClaimedTask]) -> list[Chain]:
        """Queue ``tasks`` in ``batch``; returns those whose checkpoint is already their end."""
        for task in tasks:
            if task.checkpoint:
                log.info("task %s resumes from its checkpoint at %d of %d iterations", task.id, task.checkpoint[0],
                         task.iterations)
        return batch.add(tasks)

    def _refill(self, source: _Source, batch: LaneBatch, lane: int) -> list[ClaimedTask]:
        """Tasks claimed from ``source`` for the free lanes of ``batch``, in as many claims as
        that takes (the node caps each at ``CLAIM_SECONDS`` of work); none if it has none."""
        claimed: list[ClaimedTask] = []
        while (free := batch.free_lanes() - len(claimed)) > 0:
            max_tasks, budget = self._claim_size(lane, free)
            try:
                tasks, _ = source.client.claim(max_tasks, budget)
            except NodeUnavailable as exc:
                self._failed(source, exc)
                break
            self._claimed(lane, tasks)
            claimed += tasks
            if not tasks or self._wide_claims[lane]:
                break
        return claimed

    def _compute(self, task: ClaimedTask, lane: int = 0) -> str | None:
        """The task's digest, from its checkpoint if it came with one; a task longer than a slice
        goes slice by slice (ending at each mark), keeping a checkpoint after each. None if evacuated meanwhile,
        ``_DROPPED`` if the node said to stop it (it was cancelled)."""
        done, digest = task.checkpoint or (0, "")
        if done:
            log.info("task %s resumes from its checkpoint at %d of %d iterations", task.id, done, task.iterations)
        step = max(1, int(self.hash_rate * self.slice_seconds))
        marks_at = set(positions(task.iterations, done))
        while done < task.iterations:
            if self._evacuate.is_set():
                return None
            if task.id in self._dropped:
                with self._holding_lock:
                    self._dropped.discard(task.id)
                log.info("task %s stopped at %d of %d iterations: the node says it was cancelled", task.id, done,
                         task.iterations)
                return _DROPPED
            n = next_stop(task.iterations, done, step) - done
            digest = chain(task.data, done + n, (done, digest) if done else None, compute_fn=self.compute_fn)
            done += n
            with self._holding_lock:
                self.iterations_computed += n
                if done in marks_at:
                    self._marks.setdefault(task.id, []).append(digest)
                if done < task.iterations:
                    self._holdings[lane].checkpoints[task.id] = (done, digest)
        return digest

    def _post_results(self, source: _Source, results: list[tuple[str, str, list[str]]], lease: float) -> None:
        """Post a batch; retry (capped backoff) while the lease could still hold."""
        deadline = self._clock() + lease
        delay = 0.1
        while True:
            try:
                accepted = source.client.complete(results)
            except NodeUnavailable as exc:
                if self._clock() + delay > deadline:
                    log.error("giving up on %d result(s) for %s: %s (the node will requeue them)",
                              len(results), source.client.url, exc)
                    return
                log.warning("posting results failed (%s); retrying in %.1fs", exc, delay)
                self._wait(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            except NodeRejected as exc:
                self._refused(source, exc)  # the peer's: its tasks go back at the goodbye
                return
            with self._holding_lock:
                self.completed += accepted
            if accepted != len(results):
                log.info("%d of %d result(s) were not accepted (lease lost)", len(results) - accepted, len(results))
            return

    def _give_back_all(self) -> None:
        """Hand back what the lanes left unstarted, in one call per node."""
        for source in self.sources:
            task_ids: list[str] = []
            checkpoints: dict[str, Checkpoint] = {}
            for held_by, ids, points in self._returns:
                if held_by is source:
                    task_ids += ids
                    checkpoints.update(points)
            if not task_ids:
                continue
            try:
                source.client.worker_down(returned=task_ids, checkpoints=checkpoints)
            except (NodeUnavailable, NodeRejected) as exc:
                log.warning("could not hand back %d task(s) to %s: %s (their lease will run out)",
                            len(task_ids), source.client.url, exc)

    def _say_goodbye(self, everywhere: bool = False) -> None:
        """``worker_down`` on the own node (three tries); with ``everywhere`` (after a refusal)
        also once on the peer, which then requeues any lease this worker still holds there."""
        own, *peers = [s.client for s in self.sources]
        for client, tries in [(own, 3), *((peer, 1) for peer in (peers if everywhere else []))]:
            for attempt in range(tries):
                try:
                    client.worker_down()
                    break
                except NodeRejected as exc:
                    # the same refusal as the one that ended the loop was logged already
                    same = self.rejection is not None and exc.status == self.rejection.status
                    log.log(logging.DEBUG if same else logging.WARNING, "worker_down refused: %s", exc)
                    break
                except NodeUnavailable as exc:
                    log.warning("worker_down on %s failed (%s), attempt %d of %d", client.url, exc, attempt + 1, tries)
                    if attempt + 1 < tries:
                        self._wait(0.2 * (attempt + 1))

    # ------------------------------------------------------------ failures
    def _refused(self, source: _Source, exc: NodeRejected) -> None:
        """A node refused a call: the own node's refusal ends the loop (re-raised); the peer is
        not asked again (what it leased to this worker it requeues at the goodbye or lease end)."""
        if source is self.sources[0]:
            raise exc
        with self._holding_lock:
            first, source.refused = source.refused is None, source.refused or exc
        if first:
            log.error("the other node refused a call: %s. Working for the own node only from now on (check that "
                      "both nodes have the same CLUSTER_TOKEN and run the same version)", exc)

    def _failed(self, source: _Source, exc: Exception) -> None:
        source.failures += 1
        source.backoff = min(self.max_backoff, max(0.1, source.backoff * 2))
        source.retry_at = self._clock() + source.backoff
        level = logging.WARNING if source.failures in (1, 10) or source.failures % 50 == 0 else logging.DEBUG
        log.log(level, "node %s unavailable (%s); failure %d, next try in %.1fs",
                source.client.url, exc, source.failures, source.backoff)

    def _recovered(self, source: _Source) -> None:
        if source.failures:
            log.info("node %s reachable again after %d failure(s)", source.client.url, source.failures)
        source.failures, source.backoff, source.retry_at = 0, 0.0, 0.0

    # ----------------------------------------------------------- heartbeat
    def _heartbeat_loop(self) -> None:
        """Renew the leases of tasks held longer than a third of the lease, also while stopping."""
        while not self._finished.wait(0.2):
            due = []
            with self._holding_lock:
                for holding in self._holdings.values():
                    if holding.source and self._clock() - holding.since >= holding.lease_seconds / 3:
                        holding.since = self._clock()
                        due.append((holding.source.client, list(holding.task_ids), dict(holding.checkpoints)))
            for client, task_ids, checkpoints in due:
                try:
                    stop = client.heartbeat(task_ids, checkpoints)
                    with self._holding_lock:
                        self._dropped.update(stop)
                except (NodeUnavailable, NodeRejected) as exc:
                    log.warning("heartbeat to %s failed: %s", client.url, exc)
                except Exception:  # the thread goes on: a lease lost for one failure is not a reason to lose all
                    log.exception("heartbeat to %s failed unexpectedly", client.url)

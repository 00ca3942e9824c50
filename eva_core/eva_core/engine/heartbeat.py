"""Heartbeat: every rank publishes its progress, a watchdog names the ranks that stopped.

A rank that stalls without dying (a hung data-loader worker, a dead file system, a deadlock)
holds every other rank in the next collective until the collective timeout
(``train.dist_timeout``) ends the job, and nothing says which rank is to blame.
:class:`HeartbeatHook` gives every rank a daemon thread that publishes, in the process group's
key-value store (readable by any rank without a collective, even while the others are blocked in
one), the rank's last finished iteration with its wall time and where its training thread is now
(the innermost Python frame). Rank 0's thread reads every rank's record and logs a WARNING when a
rank has not finished an iteration for ``train.heartbeat_timeout`` seconds::

    rank 1 made no progress for 62 s (last iteration 41, in loader.py:120 __next__);
    rank 0 made no progress for 61 s (last iteration 41, waiting in distributed_c10d.py:2950 all_reduce)

A rank whose training thread sits inside ``torch.distributed`` is "waiting": it is blocked on the
others, so the ranks named without "waiting" are the ones to look at. A stall is reported again
each time its length doubles, and a rank that moves again is logged at INFO.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from ..utils import comm
from .hooks import HookBase

__all__ = ["HeartbeatHook"]

logger = logging.getLogger("eva_core.engine")

# Every hook that starts gets its own key prefix: processes that train several times in one
# process group (tests, sweeps) must not read the records of an earlier run. All ranks build
# their trainers in the same order, so the counters agree across ranks.
_RUN_IDS = itertools.count()


@dataclass
class _Watch:
    """What the reporting rank last saw of one rank."""

    progress: Any  # (iteration, done) from the rank's record; None before its first record
    since: float  # local monotonic time when ``progress`` was first seen
    warn_after: float  # stall length (s) that triggers the next warning
    warned: bool = False


class HeartbeatHook(HookBase):
    """Names the ranks that stopped making progress (a WARNING on rank 0) while training runs.

    ``before_train`` starts a daemon thread on every rank, ``after_step`` records the finished
    iteration (an attribute write: the thread does the store traffic), ``after_train`` stops the
    thread and marks the rank done. Stall lengths are measured on the reporting rank's own clock,
    so clock skew between machines does not matter.

    Args:
        timeout: seconds without a finished iteration before a rank is named
            (``train.heartbeat_timeout``); 0 disables the hook.
        poll_period: seconds between two publications / checks (default: a quarter of
            ``timeout``, between 0.1 and 5 s).
        store: the key-value store shared by the ranks (default: the process group's store; in a
            single process an in-memory store, so a stalled single-process run is reported too).
        rank, world_size: this process's rank and the number of ranks (default: from the
            process group).
        report_rank: the rank that checks the records and logs the warnings.

    Raises:
        ValueError: ``timeout`` or ``poll_period`` is not a non-negative / positive number.
    """

    def __init__(self, timeout: float, *, poll_period: float | None = None, store: dist.Store | None = None,
                 rank: int | None = None, world_size: int | None = None, report_rank: int = 0):
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0 \
                or math.isinf(timeout):
            raise ValueError(f"train.heartbeat_timeout must be a number of seconds >= 0 (0 disables the "
                             f"heartbeat), got {timeout!r}")
        if poll_period is not None and not (isinstance(poll_period, (int, float)) and poll_period > 0):
            raise ValueError(f"HeartbeatHook: poll_period must be a positive number of seconds, "
                             f"got {poll_period!r}")
        self.timeout = float(timeout)
        if poll_period is None:  # a stall is seen within a quarter of the timeout after it begins
            poll_period = min(max(self.timeout / 4, 0.1), 5.0)
        self.poll_period = float(poll_period)
        self.report_rank = int(report_rank)
        self._given_store, self._given_rank, self._given_world = store, rank, world_size
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_iter = -1
        self._last_time = time.time()
        self._done = False

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    # ------------------------------------------------------------------ hook methods
    def before_train(self) -> None:
        if not self.enabled:
            return
        self.rank = comm.get_rank() if self._given_rank is None else int(self._given_rank)
        self.world_size = comm.get_world_size() if self._given_world is None else int(self._given_world)
        store = self._given_store or comm.shared_store() or dist.HashStore()
        self._store = dist.PrefixStore(f"eva_heartbeat/{next(_RUN_IDS)}/", store)
        self._train_thread_id = threading.get_ident()
        self._last_iter, self._last_time, self._done = self.trainer.iter - 1, time.time(), False
        self._watches: dict[int, _Watch] = {}
        self._stop.clear()
        self._publish()  # a record exists before any other rank looks for it
        self._thread = threading.Thread(target=self._run, name=f"eva-heartbeat-rank{self.rank}", daemon=True)
        self._thread.start()

    def after_step(self) -> None:
        # the thread publishes; two attribute writes cost nothing on the training thread
        self._last_iter, self._last_time = self.trainer.iter, time.time()

    def after_train(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=self.poll_period + 10)
        self._thread = None
        self._done = True
        try:  # a rank that finished (or failed) is not stalled
            self._publish()
        except Exception as e:  # the store goes away with a rank 0 that already exited
            logger.debug(f"heartbeat: could not mark rank {self.rank} done: {e}")

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(self.poll_period):
            try:
                self._publish()
                if self.rank == self.report_rank:
                    self._check(time.monotonic())
            except Exception as e:
                if not self._stop.is_set():
                    logger.warning(f"heartbeat: the watchdog of rank {self.rank} stopped, the shared store "
                                   f"failed: {e}")
                return

    def _publish(self) -> None:
        where, waiting = self._where_training_is()
        record = {"iter": self._last_iter, "time": self._last_time, "done": self._done,
                  "where": where, "waiting": waiting}
        self._store.set(f"rank{self.rank}", json.dumps(record))

    def _where_training_is(self) -> tuple[str, bool]:
        """``file:line function`` of the training thread's innermost Python frame, and whether
        that frame is in ``torch.distributed`` (the thread waits for other ranks)."""
        frame = sys._current_frames().get(self._train_thread_id)
        if frame is None:
            return "an unknown place (the training thread ended)", False
        code = frame.f_code
        path = code.co_filename.replace("\\", "/")
        return f"{os.path.basename(path)}:{frame.f_lineno} {code.co_name}", "/torch/distributed/" in path

    def _read(self, rank: int) -> dict | None:
        key = f"rank{rank}"
        # get() on a missing key blocks until the store timeout: ask first
        return json.loads(self._store.get(key)) if self._store.check([key]) else None

    def _check(self, now: float) -> None:
        """Compare every rank's record with the last one seen; warn about ranks stalled too long."""
        records = {r: self._read(r) for r in range(self.world_size)}
        for r, rec in records.items():
            progress = None if rec is None else (rec["iter"], rec["done"])
            watch = self._watches.get(r)
            if watch is None or watch.progress != progress:
                if watch is not None and watch.warned and rec is not None:
                    logger.info(f"heartbeat: rank {r} is making progress again (iteration {rec['iter']})")
                self._watches[r] = _Watch(progress, now, self.timeout)
        # A stall is seen up to two polls late (the stalled rank's publication, then this check),
        # so ranks that stopped together (one waiting in a collective for the other) can cross the
        # timeout one poll apart: name everyone within that lag, or the first warning would name
        # only the waiting rank and call the stalled one "moving".
        lag = min(2 * self.poll_period, self.timeout / 2)
        stalled = [r for r, w in self._watches.items()
                   if not (records[r] or {}).get("done") and now - w.since > self.timeout - lag]
        if not any(now - self._watches[r].since > self._watches[r].warn_after for r in stalled):
            return
        # ranks waiting inside a collective are blocked by the others: name the others first
        stalled.sort(key=lambda r: (bool((records[r] or {}).get("waiting")), r))
        parts = [self._describe(r, records[r], now - self._watches[r].since) for r in stalled]
        moving = [r for r, rec in records.items() if rec is not None and r not in stalled and not rec["done"]]
        if moving:
            lead = max(moving, key=lambda r: records[r]["iter"])
            parts.append(f"rank {lead} is at iteration {records[lead]['iter']}")
        logger.warning("; ".join(parts) + f" [train.heartbeat_timeout={self.timeout:g} s]")
        for r in stalled:  # repeat each time the stall doubles, not at every poll
            watch = self._watches[r]
            watch.warned, watch.warn_after = True, 2 * (now - watch.since)

    @staticmethod
    def _describe(rank: int, record: dict | None, stalled_for: float) -> str:
        # tenths matter for the short timeouts of tests, not for minutes-long stalls
        head = f"rank {rank} made no progress for {stalled_for:.{1 if stalled_for < 10 else 0}f} s"
        if record is None:
            return f"{head} (it has not started training)"
        last = f"last iteration {record['iter']}" if record["iter"] >= 0 else "no iteration finished"
        return f"{head} ({last}, {'waiting in' if record['waiting'] else 'in'} {record['where']})"

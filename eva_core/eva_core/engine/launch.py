"""Start a function on every process of a (possibly multi-machine) job, as detectron2's launch.

``launch(main, num_gpus_per_machine=N)`` calls ``main(*args)`` once per process after
``torch.distributed`` is initialised: NCCL with one GPU per process when CUDA is available,
gloo otherwise (on CPU, N is simply the number of processes). Under ``torchrun`` (RANK,
WORLD_SIZE and LOCAL_RANK in the environment) the process group is initialised from the
environment and ``main`` runs in the current process.

Every collective operation (all-reduce, barrier...) gives up after the collective timeout
(``train.dist_timeout`` in a config; :data:`DEFAULT_TIMEOUTS` when it is None), so a rank that
stalls without dying ends the job with an error naming that timeout instead of holding the other
ranks for half an hour. (A rank that dies ends the job at once: ``torch.multiprocessing`` stops
the other processes.)
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eva_core.utils import comm

__all__ = ["launch", "DEFAULT_TIMEOUTS", "DEFAULT_TIMEOUT", "collective_timeout", "find_free_port",
           "launched_by_torchrun", "share_cpu_threads", "CollectiveTimeoutError"]

#: The collective timeout when none is given, per backend. Short on CPU (gloo), where nothing
#: legitimately keeps one rank minutes behind the others; torch's 30 minutes on GPUs (NCCL),
#: where the first iterations (autotuning, compilation) and large checkpoints can.
DEFAULT_TIMEOUTS = {"gloo": timedelta(seconds=300), "nccl": timedelta(minutes=30)}
DEFAULT_TIMEOUT = DEFAULT_TIMEOUTS["nccl"]  # torch's own default; the name older callers import

logger = logging.getLogger(__name__)


def find_free_port() -> int:
    """A TCP port on localhost that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` (or another env:// launcher) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def collective_timeout(timeout: float | timedelta | None, backend: str) -> timedelta:
    """The timeout of every collective operation of a process group on ``backend``.

    Args:
        timeout: seconds (``train.dist_timeout``), a ``timedelta``, or None for
            :data:`DEFAULT_TIMEOUTS` of the backend.
        backend: ``"gloo"`` or ``"nccl"`` (any other backend gets the NCCL default).

    Raises:
        ValueError: ``timeout`` is not a positive number of seconds.
    """
    if timeout is None:
        return DEFAULT_TIMEOUTS.get(backend, DEFAULT_TIMEOUT)
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise ValueError(f"train.dist_timeout must be a number of seconds or None, got {timeout!r}")
    if not seconds > 0:  # also refuses NaN
        raise ValueError(f"train.dist_timeout must be a positive number of seconds, got {timeout!r}")
    return timedelta(seconds=seconds)


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = "auto",
    args: tuple = (),
    timeout: float | timedelta | None = None,
) -> None:
    """Run ``main_func(*args)`` on every process of the job.

    Args:
        main_func: a module-level function (it is pickled to spawned processes).
        num_gpus_per_machine: processes per machine (one per GPU; CPU processes without CUDA).
        num_machines: machines in the job.
        machine_rank: this machine's index in ``[0, num_machines)``.
        dist_url: ``tcp://host:port`` of machine 0, or ``"auto"`` (single machine only) for a
            free localhost port.
        args: positional arguments for ``main_func``.
        timeout: collective-operation timeout in seconds (or a ``timedelta``); None: the
            backend's entry of :data:`DEFAULT_TIMEOUTS`. The training tool passes
            ``train.dist_timeout``.

    Raises:
        ValueError: inconsistent arguments (bad counts, "auto" on several machines, more
            processes than GPUs, a timeout that is not a positive number of seconds).
    """
    timeout = collective_timeout(timeout, _backend())
    if launched_by_torchrun():
        _run_under_torchrun(main_func, args, timeout)
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"need at least one process and one machine, got num_gpus_per_machine="
                         f"{num_gpus_per_machine}, num_machines={num_machines}")
    if not 0 <= machine_rank < num_machines:
        raise ValueError(f"machine_rank {machine_rank} is outside [0, {num_machines})")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// init on several machines needs a file system they all share")
    use_cuda = torch.cuda.is_available()
    if use_cuda and num_gpus_per_machine > torch.cuda.device_count():
        raise ValueError(f"{num_gpus_per_machine} processes per machine requested but only "
                         f"{torch.cuda.device_count()} CUDA devices are visible")
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def share_cpu_threads(num_local_processes: int) -> int:
    """Give this process its share of the machine's cores for torch's intra-op threads.

    Spawned CPU workers would otherwise each use every core and oversubscribe the machine.
    ``OMP_NUM_THREADS``, when set, is the user's choice and is left alone.

    Returns:
        torch's intra-op thread count after the call.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, (cores or 1) // num_local_processes))
    return torch.get_num_threads()


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _distributed_worker(local_rank: int, main_func: Callable, world_size: int,
                        num_gpus_per_machine: int, machine_rank: int, dist_url: str,
                        args: tuple, timeout: float | timedelta | None) -> None:
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    timeout = collective_timeout(timeout, _backend())
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    else:
        share_cpu_threads(num_gpus_per_machine)
    try:
        dist.init_process_group(backend=_backend(), init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception as e:
        raise RuntimeError(f"process group init failed at {dist_url} (rank {global_rank}/"
                           f"{world_size}): {e}") from e
    comm.set_local_rank(local_rank)
    with _naming_collective_timeouts(timeout):
        comm.synchronize()
        main_func(*args)
    _shutdown()  # only after success: a failed rank must not wait at a barrier for the others


def _run_under_torchrun(main_func: Callable, args: tuple, timeout: float | timedelta | None) -> None:
    timeout = collective_timeout(timeout, _backend())
    local_rank = int(os.environ["LOCAL_RANK"])
    comm.set_local_rank(local_rank)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    owns_group = int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=_backend(), init_method="env://", timeout=timeout)
    with _naming_collective_timeouts(timeout):
        main_func(*args)
    if owns_group:
        _shutdown()


class CollectiveTimeoutError(RuntimeError):
    """A collective operation waited longer than the collective timeout for the other ranks."""


@contextlib.contextmanager
def _naming_collective_timeouts(timeout: timedelta) -> Iterator[None]:
    """Re-raise a backend's timeout error with the setting that controls it and what it means.

    gloo says "Timed out waiting 5000ms for recv operation", NCCL's watchdog "Watchdog caught
    collective operation timeout"; neither names the rank that timed out or the config key.
    """
    try:
        yield
    except RuntimeError as e:  # dist.DistBackendError is one too
        if isinstance(e, CollectiveTimeoutError) or not _is_collective_timeout(e):
            raise
        raise CollectiveTimeoutError(
            f"rank {comm.get_rank()}: a collective operation waited more than {timeout.total_seconds():g} s "
            f"(train.dist_timeout) for the other ranks; another rank stalled or died (the heartbeat "
            f"warnings name ranks that stopped making progress). Backend error: {e}") from e


def _is_collective_timeout(error: BaseException) -> bool:
    # match the backends' own words only: a DataLoader's "timed out" is not a stalled rank
    message = str(error).lower()
    return any(words in message for words in _BACKEND_TIMEOUT_WORDS)


_BACKEND_TIMEOUT_WORDS = ("timed out waiting", "collective operation timeout")


def _shutdown() -> None:
    if dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()

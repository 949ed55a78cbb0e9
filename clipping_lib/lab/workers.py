r"""The course's gloo worker harness: several processes on 127.0.0.1, started once.

:class:`WorkerGroup` starts ``world_size`` processes once (each joins one gloo process
group on 127.0.0.1) and runs experiment functions in all of them (``group.run(function,
**kwargs)`` returns one result per rank), so a notebook pays the start-up of the processes
once for several experiments. Every failure ends the whole group quickly with a clear
error: a worker that raises, a worker that dies, or an experiment that runs past
``timeout`` seconds. The experiments themselves live in :mod:`clipping_lib.lab.parallel`
and the lesson modules.
"""

from __future__ import annotations

import os
import pickle
import queue
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import get_context

import torch
import torch.distributed as dist

from clipping_lib._checks import check_positive

__all__ = [
    "WorkerError",
    "WorkerGroup",
    "echo",
    "free_port",
    "handshake",
    "misbehave",
    "never_answer",
]

# ---------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------

_LOOPBACK = "127.0.0.1"
_POLL_SECONDS = 0.02


class WorkerError(RuntimeError):
    """A worker raised, died, or an experiment ran past its time limit."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return s.getsockname()[1]


def _loopback_interface() -> str | None:
    """The name of the loopback interface ("lo" on Linux, "lo0" on macOS), if there is one."""
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else ()
    return next((name for name in ("lo", "lo0") if name in names), None)


def _parent_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed parent not yet reaped by its own parent is a zombie: dead for us
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _exit_when_parent_dies(parent_pid: int) -> None:
    """Start a thread that ends this worker as soon as the process that made the group ends.

    A killed notebook kernel cannot stop its workers, and a worker blocked in
    ``tasks.get()`` or in a collective would wait forever; the fork server in turn lives
    as long as a worker holds its pipe. On Linux the thread waits on a pidfd (woken when
    the parent exits, however it exits); elsewhere it polls twice a second.
    """

    def watch() -> None:
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(parent_pid)
            except OSError:
                pidfd = None
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while _parent_is_alive(parent_pid):
                time.sleep(0.5)
        os._exit(1)

    if not _parent_is_alive(parent_pid):
        os._exit(1)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _serve(
    rank: int,
    world_size: int,
    port: int,
    tasks,
    results,
    timeout: float,
    parent_pid: int,
    setup: Callable[[], object] | None,
) -> None:
    """One worker: join the group, run ``setup``, then run each task sent to it until told
    to stop.

    A task is ``(task_id, function, kwargs)``; every answer carries the task's id, so the
    group can tell a late answer to an interrupted task from the answer it waits for.
    """
    _exit_when_parent_dies(parent_pid)
    os.environ["MASTER_ADDR"] = _LOOPBACK
    os.environ["MASTER_PORT"] = str(port)
    interface = _loopback_interface()
    if interface is not None:  # gloo's own connections stay on the loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    torch.set_num_threads(1)  # the workers share the machine's cores
    task_id = 0
    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        if setup is not None:
            setup()
        results.put(("ready", rank, task_id, None))
        while (task := tasks.get()) is not None:
            task_id, function, kwargs = task
            results.put(("ok", rank, task_id, pickle.dumps(function(**kwargs))))
    except BaseException:
        results.put(("error", rank, task_id, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Deliver the last message, then skip the interpreter's teardown of torch (~1 s).
    results.close()
    results.join_thread()
    os._exit(0)


# Imported once by the fork server, so each worker starts without importing them again.
_PRELOAD = [
    __name__,
    "clipping_lib.lab.parallel",
    "torch._dynamo",
    "torch.nn.parallel",
    "torch.distributed.fsdp",
]


def _worker_context():
    """How workers are started: ``forkserver`` on Linux, ``spawn`` elsewhere.

    Both start workers from a clean process, never by forking the notebook's kernel.
    The fork server (one per Python process, started on first use) imports torch and
    this module once; forking it then takes a fraction of a second, where a spawned
    worker imports torch anew (seconds). macOS and Windows keep ``spawn``, the safe
    default there.
    """
    if sys.platform.startswith("linux"):
        context = get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return get_context("spawn")


class WorkerGroup:
    """``world_size`` worker processes in one gloo process group on 127.0.0.1.

    Use it as a context manager, or call :meth:`close` when done::

        with WorkerGroup(2) as group:
            per_rank = group.run(ddp_clip_step, max_norm=1.0)

    ``run`` sends a module-level function and its keyword arguments to every worker and
    returns the results in rank order. ``setup``, a module-level function with no
    arguments, runs once in every worker after it joins the group and before it counts as
    started (seeding, imports); the group fails to start if it raises, or if it has not
    returned within ``start_timeout`` seconds. If a worker raises or dies, or the results do
    not arrive within ``timeout`` seconds, every worker is stopped and
    :class:`WorkerError` is raised with the worker's traceback; the group is then closed.

    Each task carries an id: if a ``run`` is interrupted (a notebook's interrupt button),
    the workers' late answers to it are dropped by the next ``run``, which returns only
    its own results (or fails with a clear timeout if the interrupted task never ends).
    The workers end with the process that started them, however it ends (a killed
    kernel included): each watches its parent and exits within a second of its death,
    and the fork server follows once its workers are gone.
    """

    def __init__(
        self,
        world_size: int = 2,
        *,
        timeout: float = 60.0,
        start_timeout: float = 120.0,
        setup: Callable[[], object] | None = None,
    ) -> None:
        if setup is not None and (
            not callable(setup) or "<" in getattr(setup, "__qualname__", "")
        ):
            raise TypeError("setup must be a module-level function (workers import it by name)")
        if isinstance(world_size, bool) or not isinstance(world_size, int):
            raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
        if not 1 <= world_size <= 8:
            raise ValueError(f"world_size must be between 1 and 8, got {world_size}")
        self.timeout = check_positive(timeout, "timeout")
        start_timeout = check_positive(start_timeout, "start_timeout")
        self.world_size = world_size
        self.closed = False
        self._task_id = 0
        context = _worker_context()
        self._results = context.Queue()
        self._tasks = [context.Queue() for _ in range(world_size)]
        port = free_port()
        self._processes = [
            context.Process(
                target=_serve,
                args=(
                    rank, world_size, port, self._tasks[rank], self._results, self.timeout,
                    os.getpid(), setup,
                ),
                daemon=True,
                name=f"clipping-worker-{rank}",
            )
            for rank in range(world_size)
        ]
        for process in self._processes:
            process.start()
        self._collect("ready", "starting the workers", start_timeout)

    def run(self, function: Callable[..., object], /, **kwargs) -> list:
        """Run ``function(**kwargs)`` in every worker; return the results by rank."""
        if self.closed:
            raise RuntimeError("this WorkerGroup is closed; start a new one")
        if not callable(function) or "<" in getattr(function, "__qualname__", "<"):
            raise TypeError("function must be a module-level function (workers import it by name)")
        self._task_id += 1
        for tasks in self._tasks:
            tasks.put((self._task_id, function, kwargs))
        return self._collect("ok", f"running {function.__name__}", self.timeout)

    def close(self) -> None:
        """Stop every worker (politely, then by force) and release the queues."""
        if self.closed:
            return
        self.closed = True
        pairs = zip(self._processes, self._tasks, strict=True)
        started = [(process, tasks) for process, tasks in pairs if process.pid]
        for process, tasks in started:
            if process.is_alive():
                tasks.put(None)
        deadline = time.monotonic() + 5.0
        for process, _ in started:
            process.join(max(0.0, deadline - time.monotonic()))
        self._terminate()
        for q in (*self._tasks, self._results):
            q.close()
            q.cancel_join_thread()

    def _terminate(self) -> None:
        started = [process for process in self._processes if process.pid is not None]
        for process in started:
            if process.is_alive():
                process.terminate()
        for process in started:
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join()

    def _fail(self, message: str) -> None:
        self.closed = True
        self._terminate()
        raise WorkerError(message)

    def _fail_if_a_worker_died(self, received: dict[int, object], what: str) -> None:
        dead = [
            (rank, p.exitcode)
            for rank, p in enumerate(self._processes)
            if p.exitcode is not None and rank not in received
        ]
        if dead and self._results.empty():  # its last message may still be in flight
            time.sleep(0.2)
        if dead and self._results.empty():
            self._fail(
                f"worker {dead[0][0]} of {self.world_size} exited with code "
                f"{dead[0][1]} while {what}; all workers were stopped"
            )

    def _collect(self, kind: str, what: str, timeout: float) -> list:
        """Wait for one message of ``kind`` per rank; fail fast on an error or a dead worker."""
        received: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(received) < self.world_size:
            try:
                status, rank, task_id, payload = self._results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                self._fail_if_a_worker_died(received, what)
            else:
                if status == "error":
                    late = "" if task_id == self._task_id else " (an earlier, interrupted task)"
                    self._fail(
                        f"worker {rank} of {self.world_size} failed while {what}{late}; "
                        f"all workers were stopped. Its traceback:\n{payload}"
                    )
                if task_id == self._task_id:  # else a late answer to an interrupted run
                    received[rank] = pickle.loads(payload) if status == "ok" else payload
            # Checked after every message too: late answers arriving in a stream must not
            # keep the deadline from being noticed.
            if len(received) < self.world_size and time.monotonic() > deadline:
                missing = sorted(set(range(self.world_size)) - set(received))
                self._fail(
                    f"timed out after {timeout:g} s while {what}: no answer from "
                    f"worker(s) {missing}; all workers were stopped"
                )
        return [received[rank] for rank in range(self.world_size)]

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "running"
        return f"WorkerGroup(world_size={self.world_size}, {state})"


def misbehave(rank: int = 1, how: str = "raise") -> None:
    """A broken experiment, to show that failures end the group quickly.

    Worker ``rank`` raises (``how="raise"``), exits abruptly (``"exit"``) or sleeps
    forever (``"hang"``); every other worker waits for it in an ``all_reduce`` that
    would never finish.
    """
    if how not in ("raise", "exit", "hang"):
        raise ValueError(f"how must be 'raise', 'exit' or 'hang', got {how!r}")
    if dist.get_rank() == rank:
        if how == "raise":
            raise RuntimeError(f"worker {rank} failed on purpose")
        if how == "exit":
            os._exit(3)
        while True:
            time.sleep(1.0)
    dist.all_reduce(torch.ones(1))


def never_answer() -> None:
    """Block forever: a worker that never answers, to test a timeout without timing."""
    threading.Event().wait()


def handshake(ready_dir: str, release: str) -> tuple[int, str]:
    """Signal that this worker is running (create ``ready_dir/rank<r>``), then wait until
    the file ``release`` exists; return ``(rank, "released")``.

    A test interrupts a ``run`` only after every worker has signalled, so the interrupt
    lands inside the run on any machine, however the threads are scheduled.
    """
    rank = dist.get_rank()
    with open(os.path.join(ready_dir, f"rank{rank}"), "w"):
        pass
    while not os.path.exists(release):
        time.sleep(0.01)
    return rank, "released"


def echo(value: object = None, delay: float = 0.0) -> tuple[int, object]:
    """``(rank, value)`` after ``delay`` seconds: a task whose answer says whose it is."""
    time.sleep(delay)
    return dist.get_rank(), value

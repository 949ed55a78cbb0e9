r"""Gradient clipping with several processes: torch.distributed, backend gloo, on the CPU.

Clipping must see the gradient of the *whole* batch. In data-parallel training every
worker holds the gradient of its own share of the batch until the gradients are
aggregated (all-reduced in DDP, reduce-scattered in FSDP), so the order is

    backward  ->  aggregate  ->  global norm  ->  clip  ->  optimizer step

:class:`WorkerGroup` starts ``world_size`` processes once (each joins one gloo process
group on 127.0.0.1) and runs experiment functions of this module in all of them, so a
notebook pays the start-up of the processes once for several experiments. Every
failure ends the whole group quickly with a clear error: a worker that raises, a
worker that dies, or an experiment that runs past ``timeout`` seconds.

The experiments (run them with ``group.run(function, **kwargs)``; each returns one
result per rank):

* :func:`ddp_clip_step`: DDP's all-reduced gradient has the single-process full-batch
  norm; clipping each worker's local gradient before aggregation gives another update.
* :func:`sharded_norms`: with sharded gradients (FSDP2 ``fully_shard`` and a manual
  flat sharding) a rank's local norm is wrong; the global p-norm is
  :math:`(\sum_r \lVert g_r\rVert_p^p)^{1/p}` over the shards :math:`g_r`, the max norm
  is :math:`\max_r \lVert g_r\rVert_\infty`.
* :func:`accumulation_no_sync`: with gradient accumulation under ``no_sync`` the
  gradient is complete only after the step that synchronises; clip there, once.
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from multiprocessing import get_context

import torch
import torch.distributed as dist
from torch import Tensor, nn

from clipping_lib._checks import as_tensor_list, check_norm_type, check_positive, check_threshold
from clipping_lib.clip import clip_grad_norm_, clip_grads_with_norm_, get_total_norm

__all__ = [
    "WorkerError",
    "WorkerGroup",
    "accumulation_no_sync",
    "clip_sharded_grads_",
    "ddp_clip_step",
    "echo",
    "free_port",
    "make_batch",
    "make_model",
    "misbehave",
    "sharded_norms",
    "sharded_total_norm",
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
    rank: int, world_size: int, port: int, tasks, results, timeout: float, parent_pid: int
) -> None:
    """One worker: join the group, then run each task sent to it until told to stop.

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
_PRELOAD = [__name__, "torch._dynamo", "torch.nn.parallel", "torch.distributed.fsdp"]


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
    returns the results in rank order. If a worker raises or dies, or the results do
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
        self, world_size: int = 2, *, timeout: float = 60.0, start_timeout: float = 120.0
    ) -> None:
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
                    os.getpid(),
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

    def _collect(self, kind: str, what: str, timeout: float) -> list:
        """Wait for one message of ``kind`` per rank; fail fast on an error or a dead worker."""
        received: dict[int, object] = {}
        deadline = time.monotonic() + timeout
        while len(received) < self.world_size:
            try:
                status, rank, task_id, payload = self._results.get(timeout=_POLL_SECONDS)
            except queue.Empty:
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
                if time.monotonic() > deadline:
                    missing = sorted(set(range(self.world_size)) - set(received))
                    self._fail(
                        f"timed out after {timeout:g} s while {what}: no answer from "
                        f"worker(s) {missing}; all workers were stopped"
                    )
                continue
            if status == "error":
                late = "" if task_id == self._task_id else " (an earlier, interrupted task)"
                self._fail(
                    f"worker {rank} of {self.world_size} failed while {what}{late}; "
                    f"all workers were stopped. Its traceback:\n{payload}"
                )
            if task_id != self._task_id:
                continue  # a late answer to an interrupted run: not ours
            received[rank] = pickle.loads(payload) if status == "ok" else payload
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


def echo(value: object = None, delay: float = 0.0) -> tuple[int, object]:
    """``(rank, value)`` after ``delay`` seconds: a task whose answer says whose it is."""
    time.sleep(delay)
    return dist.get_rank(), value


# ---------------------------------------------------------------------------------------
# Norms of sharded gradients
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def sharded_total_norm(
    local_tensors: Tensor | Sequence[Tensor], norm_type: float | str = 2.0, group=None
) -> Tensor:
    r"""The p-norm of tensors sharded over the ranks of ``group``; every rank calls it.

    Each rank passes only its own shards :math:`g_r`. For finite p the ranks add their
    :math:`\lVert g_r\rVert_p^p` with an ``all_reduce(SUM)`` and take the p-th root; for
    the max norm they take an ``all_reduce(MAX)`` of :math:`\lVert g_r\rVert_\infty`.
    Every rank gets the same 0-d tensor, in the shards' dtype as ``get_total_norm``
    returns it; the powers and the sum are taken in float32 (float64 for float64 shards),
    since :math:`\lVert g_r\rVert_p^p` overflows float16 for a norm above 256 when p = 2.
    """
    p = check_norm_type(norm_type)
    tensors = [t for t in as_tensor_list(local_tensors, "local_tensors") if t.numel()]
    local = get_total_norm(tensors, p)  # a rank may own no elements: its norm is 0
    if math.isinf(p):
        total = local.clone()
        dist.all_reduce(total, op=dist.ReduceOp.MAX, group=group)
        return total
    wide = torch.float64 if local.dtype == torch.float64 else torch.float32
    total = local.to(wide).pow(p)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total.pow(1.0 / p).to(local.dtype)


@torch.no_grad()
def clip_sharded_grads_(
    parameters: Tensor | Sequence[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    group=None,
    *,
    eps: float = 1e-6,
) -> Tensor:
    """Global norm clipping of sharded gradients; returns the global norm before clipping.

    Every rank passes the parameters (shards) it owns; the norm is
    :func:`sharded_total_norm` of their gradients, so every rank scales by the same factor.
    """
    params = as_tensor_list(parameters, "parameters")
    max_norm = check_threshold(max_norm, "max_norm", allow_inf=True)
    grads = [p.grad for p in params if p.grad is not None]
    total_norm = sharded_total_norm(grads, norm_type, group)
    clip_grads_with_norm_(params, max_norm, total_norm, eps=eps)
    return total_norm


# ---------------------------------------------------------------------------------------
# The experiments (each runs in every worker of a WorkerGroup)
# ---------------------------------------------------------------------------------------


def make_model(seed: int = 0) -> nn.Module:
    """A small MLP (8 -> 32 -> 4, tanh), the same on every rank for the same seed."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))


def fully_sharded_model(seed: int = 0) -> nn.Module:
    """:func:`make_model` under FSDP2 across this group: each layer's weights sharded by rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    model = make_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def make_batch(batch_size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A regression batch ``(x, y)``; the last eighth of the targets are outliers (x 20).

    Split into equal chunks, the outliers land on the last rank, so the workers' local
    gradients differ a lot, as they do when one worker draws a bad batch.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 8, generator=generator)
    mixing = torch.randn(8, 4, generator=generator)
    y = torch.sin(x @ mixing) + 0.1 * torch.randn(batch_size, 4, generator=generator)
    y[batch_size - batch_size // 8 :] *= 20.0
    return x, y


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return torch.mean((model(x) - y) ** 2)


def _flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _my_chunk(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    x, y = batch
    if len(x) % world_size:
        raise ValueError(f"batch_size {len(x)} must be divisible by world_size {world_size}")
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def _reference(batch: tuple[Tensor, Tensor], seed: int, max_norm: float) -> dict[str, Tensor]:
    """One process, the full batch: the gradient, its norms, and the clipped gradient."""
    model = make_model(seed)
    _loss(model, *batch).backward()
    grad = _flat_grad(model)
    return {
        "full_norm": torch.linalg.vector_norm(grad),
        "full_inf_norm": torch.linalg.vector_norm(grad, math.inf),
        "full_grad": grad,
        "full_clipped": grad * torch.clamp(max_norm / (grad.norm() + 1e-6), max=1.0),
    }


def ddp_clip_step(max_norm: float = 1.0, seed: int = 0, batch_size: int = 32) -> dict:
    """Clip after DDP's all-reduce (right) and before any aggregation (wrong).

    Returns, on each rank: the single-process ``full_norm``/``full_clipped`` of the whole
    batch; ``ddp_norm``, the norm ``clip_grad_norm_`` saw after DDP's backward, and
    ``ddp_clipped``, the gradient it left; ``local_norm``, the norm of this rank's own
    gradient, and ``local_then_mean``, the average over ranks of locally clipped
    gradients (what the optimizer would get if each worker clipped alone).
    """
    from torch.nn.parallel import DistributedDataParallel

    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)

    ddp = DistributedDataParallel(make_model(seed))
    _loss(ddp, x, y).backward()  # DDP averages the gradients over the ranks here
    result["ddp_norm"] = clip_grad_norm_(ddp.parameters(), max_norm)
    result["ddp_clipped"] = _flat_grad(ddp.module)

    alone = make_model(seed)
    _loss(alone, x, y).backward()
    result["local_norm"] = clip_grad_norm_(alone.parameters(), max_norm)  # wrong: local clip
    mean = _flat_grad(alone)
    dist.all_reduce(mean)
    result["local_then_mean"] = mean / dist.get_world_size()
    return result


def sharded_norms(max_norm: float = 1.0, seed: int = 0, batch_size: int = 32) -> dict:
    """Global norms of sharded gradients: FSDP2 ``fully_shard`` and a manual flat sharding.

    Returns, on each rank: the single-process reference (``full_norm``, ``full_inf_norm``,
    ``full_clipped``); for FSDP2, ``fsdp_local_norm`` (this rank's shards only: wrong),
    ``fsdp_norm`` and ``fsdp_inf_norm`` (``get_total_norm`` of the DTensor gradients, whose
    placements are ``fsdp_norm_placements`` before ``full_tensor()``) and
    ``fsdp_clipped`` (the full gradient after ``clip_grad_norm_``, gathered); for the
    manual sharding of the flat full-batch gradient, ``shard`` (this rank's slice),
    ``manual_local_norm``, ``manual_norm``, ``manual_inf_norm`` and ``manual_clipped``
    (this rank's slice after :func:`clip_sharded_grads_`).
    """
    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)

    model = fully_sharded_model(seed)
    _loss(model, x, y).backward()  # FSDP reduce-scatters: each rank keeps one shard, averaged
    grads = [p.grad for p in model.parameters()]
    result["fsdp_local_norm"] = get_total_norm([g.to_local() for g in grads])
    result["fsdp_inf_norm"] = get_total_norm(grads, math.inf).full_tensor()
    result["fsdp_norm_placements"] = str(get_total_norm(grads).placements)
    result["fsdp_norm"] = clip_grad_norm_(model.parameters(), max_norm).full_tensor()
    result["fsdp_clipped"] = torch.cat([g.full_tensor().reshape(-1) for g in grads])

    # A ZeRO-style flat sharding: rank r owns the r-th contiguous slice of every vector.
    own = result["full_grad"].tensor_split(dist.get_world_size())[dist.get_rank()]
    shard = nn.Parameter(torch.zeros_like(own))
    shard.grad = own.clone()
    result["shard"] = shard.grad.clone()
    result["manual_local_norm"] = get_total_norm(shard.grad)
    result["manual_inf_norm"] = sharded_total_norm(shard.grad, math.inf)
    result["manual_norm"] = clip_sharded_grads_([shard], max_norm)
    result["manual_clipped"] = shard.grad
    return result


def accumulation_no_sync(
    max_norm: float = 1.0, seed: int = 0, batch_size: int = 32, micro_batches: int = 4
) -> dict:
    """Gradient accumulation under DDP's ``no_sync``: clip once, after the syncing step.

    Each rank splits its chunk into ``micro_batches`` pieces; the loss of each is divided
    by ``micro_batches`` so the accumulated gradient is the full-batch mean. Returns, on
    each rank: ``micro_norms``, the norm of the accumulated gradient after each
    micro-batch (local until the last one, which all-reduces); ``clipped_once`` (clip
    after the syncing step: right) and ``clipped_every_step`` (clip after every
    micro-batch: wrong), with the single-process reference ``full_clipped``.
    """
    from contextlib import nullcontext

    from torch.nn.parallel import DistributedDataParallel

    batch = make_batch(batch_size, seed)
    result = _reference(batch, seed, max_norm)
    x, y = _my_chunk(batch)
    pieces = list(zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True))
    if len(pieces) != micro_batches or len(x) % micro_batches:
        raise ValueError(f"each rank's {len(x)} examples must split into {micro_batches} pieces")

    for clip_every_step in (False, True):
        ddp = DistributedDataParallel(make_model(seed))
        norms = []
        for index, (xm, ym) in enumerate(pieces):
            syncs = index == micro_batches - 1
            with nullcontext() if syncs else ddp.no_sync():
                (_loss(ddp, xm, ym) / micro_batches).backward()
            if clip_every_step or syncs:
                norms.append(clip_grad_norm_(ddp.parameters(), max_norm))
            else:
                norms.append(get_total_norm([p.grad for p in ddp.parameters()]))
        key = "clipped_every_step" if clip_every_step else "clipped_once"
        result[key] = _flat_grad(ddp.module)
        if not clip_every_step:
            result["micro_norms"] = torch.stack(norms)
    return result

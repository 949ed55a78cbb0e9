"""Clipping with torch.distributed (gloo, CPU): each claim of notebook 08, with real processes.

One group of two workers runs every experiment (starting processes is the slow part);
the failure tests start their own groups, since a failure ends a group.

No test here asserts on a time or on how processes and threads are scheduled: a timeout
is tested with a worker that never answers, an interrupt with a handshake (every worker
signals that it is running before the interrupt is sent).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipping_lib.distributed import sharded_total_norm
from clipping_lib.lab.parallel import (
    accumulation_no_sync,
    ddp_clip_step,
    dtensor_clippers,
    make_batch,
    sharded_norms,
    uneven_shards,
)
from clipping_lib.lab.workers import (
    WorkerError,
    WorkerGroup,
    echo,
    free_port,
    handshake,
    misbehave,
    never_answer,
)

MAX_NORM = 0.2
TENSOR = torch.arange(5.0)
FP16_SHARD = torch.full((4,), 200.0, dtype=torch.float16)  # norm 400: its square overflows fp16


@pytest.fixture(scope="module")
def group_and_results():
    """Every experiment's results, computed at once; then the group, for the failure test."""
    group = WorkerGroup(2, timeout=60)
    try:
        results = {
            "ddp": group.run(ddp_clip_step, max_norm=MAX_NORM),
            "sharded": group.run(sharded_norms, max_norm=MAX_NORM),
            "accumulation": group.run(accumulation_no_sync, max_norm=MAX_NORM),
            "p3": group.run(sharded_total_norm, local_tensors=[TENSOR], norm_type=3),
            "inf": group.run(sharded_total_norm, local_tensors=[TENSOR], norm_type="inf"),
            "fp16": group.run(sharded_total_norm, local_tensors=[FP16_SHARD]),
            "dtensor": group.run(dtensor_clippers),
            "uneven": {
                (dtype, p): group.run(uneven_shards, dtype=dtype, norm_type=p)
                for dtype in (torch.float64, torch.float16, torch.float32)
                for p in (2.0, "inf")
            },
        }
        yield group, results
    finally:
        group.close()


@pytest.fixture(scope="module")
def results(group_and_results):
    return group_and_results[1]


def close(a, b, rtol=1e-5, atol=1e-7):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


def test_ddp_norm_is_the_full_batch_norm_and_clipping_matches(results):
    for rank in results["ddp"]:
        assert rank["full_norm"] > MAX_NORM  # clipping is active in this experiment
        assert close(rank["ddp_norm"], rank["full_norm"], rtol=1e-6)
        assert close(rank["ddp_clipped"], rank["full_clipped"])
    zero, one = results["ddp"]
    assert torch.equal(zero["ddp_clipped"], one["ddp_clipped"])  # replicas stay identical


def test_clipping_before_aggregation_gives_another_update(results):
    zero, one = results["ddp"]
    assert not close(zero["local_norm"], one["local_norm"], rtol=0.1)  # the workers disagree
    wrong, right = zero["local_then_mean"], zero["full_clipped"]
    assert (wrong - right).norm() / right.norm() > 0.2
    assert torch.nn.functional.cosine_similarity(wrong, right, dim=0) < 0.99


def test_sharded_local_norm_is_wrong_and_global_norm_matches(results):
    zero, one = results["sharded"]
    for rank in (zero, one):
        assert rank["fsdp_local_norm"] < 0.95 * rank["full_norm"]
        assert close(rank["fsdp_norm"], rank["full_norm"], rtol=1e-6)
        assert close(rank["fsdp_inf_norm"], rank["full_inf_norm"], rtol=1e-6)
        assert close(rank["fsdp_clipped"], rank["full_clipped"])
        assert close(rank["manual_norm"], rank["full_norm"], rtol=1e-6)
        assert close(rank["manual_inf_norm"], rank["full_inf_norm"], rtol=1e-6)
    squares = zero["manual_local_norm"] ** 2 + one["manual_local_norm"] ** 2
    assert close(squares.sqrt(), zero["full_norm"], rtol=1e-6)
    manual = torch.cat([zero["manual_clipped"], one["manual_clipped"]])
    assert close(manual, zero["full_clipped"])


def test_sharded_total_norm_other_orders(results):
    # Both ranks pass the same tensor t: the global p-norm is (2 ||t||_p^p)^(1/p).
    for value in results["p3"]:
        assert close(value, (2 * TENSOR.pow(3).sum()) ** (1 / 3))
    for value in results["inf"]:
        assert value == 4.0


def test_accumulation_clip_once_after_the_syncing_step(results):
    zero, one = results["accumulation"]
    assert not close(zero["micro_norms"][0], one["micro_norms"][0], rtol=0.05)  # local
    assert close(zero["micro_norms"][-1], one["micro_norms"][-1], rtol=1e-6)  # synced
    assert close(zero["micro_norms"][-1], zero["full_norm"], rtol=1e-6)
    for rank in (zero, one):
        assert close(rank["clipped_once"], rank["full_clipped"])
        wrong = rank["clipped_every_step"]
        assert (wrong - rank["full_clipped"]).norm() / rank["full_clipped"].norm() > 0.1


def test_batch_has_outliers_on_the_last_rank():
    _, y = make_batch(32, seed=0)
    assert y[28:].abs().mean() > 5 * y[:28].abs().mean()


def test_a_raising_worker_fails_fast_with_its_traceback(group_and_results):
    group, _ = group_and_results  # its experiments are done: breaking it is fine now
    # the message names the failure, not the 60 s timeout: rank 0 was stopped, not waited for
    with pytest.raises(WorkerError, match=r"worker 1 of 2 failed(.|\n)*failed on purpose"):
        group.run(misbehave, rank=1, how="raise")
    assert group.closed and not any(p.is_alive() for p in group._processes)
    with pytest.raises(RuntimeError, match="closed"):
        group.run(misbehave)


@pytest.mark.parametrize(
    ("how", "message"), [("exit", "exited with code 3"), ("hang", "timed out after 2 s")]
)
def test_a_dying_or_hanging_worker_fails_fast(how, message):
    with WorkerGroup(1, timeout=2) as group:
        with pytest.raises(WorkerError, match=message):
            group.run(misbehave, rank=0, how=how)
        assert not any(p.is_alive() for p in group._processes)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"world_size": 0}, ValueError, "world_size"),
        ({"world_size": 2.0}, TypeError, "world_size"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": math.nan}, ValueError, "timeout"),
        ({"start_timeout": -1}, ValueError, "start_timeout"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        WorkerGroup(**kwargs)


def test_free_port_is_bindable_on_loopback():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_misbehave_checks_how():
    with pytest.raises(ValueError, match="how"):
        misbehave(0, how="explode")


def test_workers_that_do_not_start_in_time_are_stopped():
    # Their setup never returns, so they never report ready, however fast the machine.
    with pytest.raises(WorkerError, match=r"timed out after 1 s while starting the workers"):
        WorkerGroup(2, start_timeout=1, setup=never_answer)


def test_a_setup_that_raises_fails_the_start_with_its_traceback():
    with pytest.raises(WorkerError, match=r"failed while starting(.|\n)*failed on purpose"):
        WorkerGroup(1, setup=functools.partial(misbehave, 0))  # rank 0 raises in its setup
    with pytest.raises(TypeError, match="setup"):
        WorkerGroup(1, setup=lambda: None)


def test_an_interrupted_run_leaves_no_stale_answers(tmp_path):
    import _thread
    import threading

    ready, release = tmp_path / "ready", tmp_path / "release"
    ready.mkdir()

    def interrupt_once_every_worker_runs() -> None:
        while len(list(ready.iterdir())) < 2:  # the handshake: both workers are in the task
            threading.Event().wait(0.01)
        _thread.interrupt_main()  # the notebook's interrupt button

    with WorkerGroup(2, timeout=60) as group:
        threading.Thread(target=interrupt_once_every_worker_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            group.run(handshake, ready_dir=str(ready), release=str(release))
        release.touch()  # the interrupted task now ends; its answers must be dropped
        assert group.run(echo, value="next") == [(0, "next"), (1, "next")]
        assert group.run(echo, value="after") == [(0, "after"), (1, "after")]


PARENT = """
import os, sys, time
from multiprocessing import forkserver
from clipping_lib.lab.workers import WorkerGroup

if __name__ == "__main__":
    group = WorkerGroup(2)
    server = forkserver._forkserver._forkserver_pid
    print(server, *[p.pid for p in group._processes], flush=True)
    time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # reparented to a PID 1 that does not reap: a zombie has exited too
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork server is Linux-only")
def test_workers_and_fork_server_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 3 and not any(_gone(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)  # a killed kernel: no cleanup code runs
        parent.wait()
    deadline = time.monotonic() + 300.0  # a guard against hanging the suite, not a time claim
    while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids), "a worker or the fork server outlived the parent"


def test_sharded_norm_of_fp16_shards_does_not_overflow(results):
    expected = torch.linalg.vector_norm(torch.cat([FP16_SHARD.float()] * 2))  # about 566
    for total in results["fp16"]:
        assert total.dtype == torch.float16 and torch.isfinite(total)
        torch.testing.assert_close(total.float(), expected, rtol=1e-3, atol=0)


# --- issue 20, item 3: DTensor gradients; item 8: a rank that owns no elements ---


@pytest.mark.parametrize("name", ["AutoClip", "ZClip", "NormClip", "ClipMonitor(ZClip)"])
def test_clippers_on_dtensor_gradients_keep_the_single_process_statistics(results, name):
    for rank in results["dtensor"]:
        run = rank[name]
        assert run["plain"]  # plain tensors in every ClipStep, never a DTensor
        assert run["clipped"].any()  # the spikes were clipped
        assert torch.equal(run["clipped"], run["single_clipped"])
        assert close(run["total_norm"], run["single_total_norm"], rtol=1e-5)
        assert close(run["threshold"], run["single_threshold"], rtol=1e-5)
        assert close(run["grad"], run["single_grad"], rtol=1e-5, atol=1e-6)
    zero, one = (rank[name] for rank in results["dtensor"])
    assert torch.equal(zero["total_norm"], one["total_norm"])  # identical on every rank
    assert torch.equal(zero["threshold"], one["threshold"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.float32])
@pytest.mark.parametrize("p", [2.0, "inf"])
def test_sharded_total_norm_when_a_rank_owns_no_elements(results, dtype, p):
    values = torch.arange(10, dtype=torch.float64)
    expected = torch.linalg.vector_norm(values, math.inf if p == "inf" else 2.0)
    zero, one = results["uneven"][dtype, p]
    assert zero.dtype == one.dtype == dtype and zero.shape == one.shape == ()
    assert torch.equal(zero, one)
    torch.testing.assert_close(zero.double(), expected, rtol=1e-3, atol=0)

"""Data-parallel training on one machine: `clara train --workers N`.

N processes train one run. Each takes every Nth micro-batch of a step, with cores/N torch
threads, and their gradients are summed before every optimizer step, so a step is the
computation of one process accumulating all of them (the same sums; for two workers the
same order). Why processes: on a CPU the small matmuls of a LoRA step do not spread over
threads (oneDNN runs a 1024^3 bf16 matmul on one thread of two on an AMX Xeon), while two
processes of one thread each keep both cores busy (docs/TRAINING.md, "Workers").

The parent process holds the run's lock and only watches: if a worker fails, the others
are stopped and the error is raised; the run stays at its last checkpoint. Workers die with
their parent (`kill -9` of `clara train` leaves no orphan writing checkpoints).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import torch

from ..errors import ClaraError, UsageError


class Team:
    """This process's place in the run: rank of size. Size 1 (the default) is a no-op."""

    def __init__(self, rank: int = 0, size: int = 1, cores: int | None = None):
        self.rank, self.size = rank, size
        self.cores = cores or torch.get_num_threads()  # the whole run's threads

    @property
    def lead(self) -> bool:
        """The worker that saves checkpoints, shows progress and returns the result."""
        return self.rank == 0

    def takes(self, micro_batch: int) -> bool:
        return micro_batch % self.size == self.rank

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Every worker's gradients replaced by their sum over the team (one flat all-reduce)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def sum(self, values: Sequence[float]) -> list[float]:
        """Per-step counters (losses, examples, tokens) summed over the team."""
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def same_start(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Every worker starts from the lead's parameters (they load identically; this makes sure)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    @contextlib.contextmanager
    def lead_first(self) -> Iterator[bool]:
        """A block the lead runs alone with all the run's cores (writing a shared cache); the others
        wait, then run it after (reading what the lead wrote). Yields whether this is the lead."""
        if self.size == 1:
            yield True
            return
        import torch.distributed as dist

        if not self.lead:
            dist.barrier()
        own = torch.get_num_threads()
        if self.lead:
            torch.set_num_threads(self.cores)
        try:
            yield self.lead
        finally:
            torch.set_num_threads(own)
            if self.lead:
                dist.barrier()


def auto_workers(grad_accum: int, device: torch.device) -> int:
    """--workers auto: one process per core on a CPU, at most one per micro-batch; 1 on a GPU."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), grad_accum))


def check_workers(workers: int, grad_accum: int, device: torch.device) -> None:
    if workers == 1:
        return
    if device.type != "cpu":
        raise UsageError("--workers > 1 is for CPU training (one GPU runs one process)")
    if workers > grad_accum:
        raise UsageError(f"--workers {workers} needs --grad-accum {workers} or more: each worker takes "
                         "whole micro-batches of a step")


def run_team(size: int, target: Callable, *args):
    """Run target(team, *args) in `size` worker processes sharing this process's torch threads
    (cores // size each); returns what the lead's call returned, or raises what a worker raised."""
    cores = torch.get_num_threads()
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    messages = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="clara-team-") as tmp:
        rendezvous = os.path.join(tmp, "rendezvous")
        procs = [ctx.Process(target=_member, name=f"clara-train-worker-{rank}",
                             args=(rank, size, cores, rendezvous, os.getpid(), messages, target, args))
                 for rank in range(size)]
        for p in procs:
            p.start()
        try:
            result, finished = None, False
            while True:
                failed = [(p.name, p.exitcode) for p in procs if p.exitcode not in (None, 0)]
                while not messages.empty():  # after the exit codes: a failed worker's message is in
                    kind, rank, payload = messages.get()
                    if kind == "error":
                        raise payload
                    result, finished = payload, True
                if failed:
                    name, code = failed[0]
                    raise ClaraError(f"{name} exited with code {code}; the run stays at its last checkpoint "
                                     "(rerun the same command to resume)")
                if all(p.exitcode == 0 for p in procs):
                    if not finished:
                        raise ClaraError("the training workers ended without a result")
                    return result
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
            for p in procs:
                p.join()


def _member(rank: int, size: int, cores: int, rendezvous: str, parent: int, messages, target, args) -> None:
    with contextlib.suppress(OSError, AttributeError):  # Linux: die with the parent, even on SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)
    import torch.distributed as dist

    torch.set_num_threads(max(1, cores // size))
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=size,
                            timeout=timedelta(hours=6))  # the lead may compress candidates for long
    try:
        result = target(Team(rank, size, cores), *args)
        if rank == 0:
            messages.put(("result", rank, result))
    except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            messages.put(("error", rank, e))
        except Exception:  # an exception that does not pickle
            messages.put(("error", rank, ClaraError(f"training worker {rank}: {e!r}")))
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()

"""The trainer under torchrun / ``accelerate launch``: the process group, each rank's shard of a batch,
the model wrapped for data parallelism (DDP, or FSDP2's ``fully_shard`` for full fine-tunes), metrics
averaged over the ranks, and a stop that every rank agrees on.

Every rank draws the whole step's batch from the same (seed, step) generator and keeps its own slice,
so N ranks at a global batch B train on exactly the examples one process at B trains on; with equal
slices the mean of the ranks' mean losses is the global mean, and DDP's averaged gradients are the
single process's. Only rank 0 writes events, samples and checkpoints. A single process (no torchrun,
or torchrun with one rank) uses none of this: no process group, no wrapper, no collective.

Control messages (the stop vote, barriers) go over a gloo group on the CPU, so they never wait on, or
synchronise with, the GPU.
"""

import os
import shutil
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

# a rank waiting for rank 0's validation samples or checkpoint waits at most this long before it fails
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


def env_rank() -> int:
    """This process's global rank as the launcher set it (0 when not launched by one)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class _DataParallel(nn.parallel.DistributedDataParallel):
    """DDP that answers the wrapped model's attributes (``config``, ``dtype``), which the families' predict read."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@dataclass
class Distributed:
    """Where this process stands among the ranks of its run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process
    _control: object = None  # the gloo group of the stop vote and the barriers
    _vote: tuple | None = field(default=None, repr=False)  # the stop vote in flight: (work, tensor)
    _ddp: nn.Module | None = field(default=None, repr=False)
    _scratch: Path | None = None
    _sharded: bool = False  # the model is sharded by FSDP2: its checkpoints are gathered (trainer/fsdp.py)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self._sharded

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: cuda:LOCAL_RANK on a GPU box (the launcher's CUDA_VISIBLE_DEVICES lists the run's GPUs)."""
        if device.type == "cuda" and self.active:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def shard(self, n: int) -> slice:
        """This rank's part of a (micro-)batch of ``n`` examples; ``n`` is a multiple of the world size (checked)."""
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def wrap(self, model: nn.Module, how: str, trial_backward=None) -> nn.Module:
        """The module the forwards go through: the model itself (one process), DDP, or the model sharded by FSDP2.

        ``trial_backward`` runs one forward and backward of the raw model: a trainable parameter it leaves
        without a gradient (a family's unused embedding) makes DDP look for unused parameters every step,
        which only such models pay for. (DDP's static graph would avoid that, but it breaks no_sync.)"""
        if not self.active:
            return model
        if how == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in _blocks_to_shard(model):
                fully_shard(block)
            fully_shard(model)
            self._sharded = True
            return model
        device_ids = [self.local_rank] if self.backend == "nccl" else None
        unused = _unused_parameters(model, trial_backward) if trial_backward is not None else []
        self._ddp = _DataParallel(model, device_ids=device_ids, find_unused_parameters=bool(unused))
        return self._ddp

    def no_sync(self, last: bool):
        """Around every micro-batch but a step's last: DDP keeps its gradients local until the last one."""
        if last or self._ddp is None:
            return nullcontext()
        return self._ddp.no_sync()

    def full(self, tensor):
        """A plain tensor of a value FSDP2 gives as a DTensor (the clipped gradients' norm); others as they are."""
        return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor

    def mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over the ranks, in place (a no-op for one process)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        return tensor

    def stop_agreed(self, requested: bool) -> bool:
        """Whether every rank stops after this step: true on all of them at the same step once any rank was
        asked (SIGTERM). The vote of a step is read at the next, so it never stalls a step; a stop is
        therefore taken one step after the signal."""
        if not self.active:
            return requested
        agreed = False
        if self._vote is not None:
            work, votes = self._vote
            work.wait()
            agreed = bool(votes.item())
        votes = torch.tensor([int(requested)], dtype=torch.int32)
        self._vote = (dist.all_reduce(votes, op=dist.ReduceOp.MAX, group=self._control, async_op=True), votes)
        return agreed

    def weights_agree(self, model: nn.Module) -> bool:
        """Whether every rank holds the same trainable weights (a sum per tensor, compared exactly): DDP keeps
        them equal bit for bit, so a difference means the ranks no longer train one model. Collective."""
        if not self.active or self._sharded:  # FSDP: each rank holds only its shard
            return True
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad]).cpu()
        low, high = sums.clone(), sums.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN, group=self._control)
        dist.all_reduce(high, op=dist.ReduceOp.MAX, group=self._control)
        return bool(torch.equal(low, high))

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self._control)

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if self.active and dist.is_initialized():
            if self._vote is not None:
                self._vote[0].wait()
            dist.destroy_process_group()


def set_up_distributed(device: torch.device) -> Distributed:
    """Join the launcher's process group (NCCL on GPUs, gloo on the CPU); a single process joins none."""
    world_size = env_world_size()
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if backend != "gloo" else None
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend,
                       _control=control)


def _unused_parameters(model: nn.Module, trial_backward) -> list[str]:
    """The trainable parameters that one trial forward and backward leaves without a gradient (the global RNG
    is kept as it was, so the trial changes nothing of the run)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        trial_backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return unused


def _blocks_to_shard(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (each its own FSDP unit, gathered only while it runs)."""
    found = []
    for _, child in model.named_modules():
        if isinstance(child, nn.ModuleList):
            found.extend(module for module in child if any(p.requires_grad for p in module.parameters()))
    return found


def multi_process_problems(config, world_size: int) -> list[tuple[str, str]]:
    """What a config cannot do on the ``world_size`` ranks it was launched on (num_processes may say otherwise:
    torchrun started by hand decides), with the key to change; checked before any step."""
    if world_size > 1 and config.train_batch_size % world_size:
        low = max(world_size, config.train_batch_size // world_size * world_size)
        return [("train_batch_size", (
            f"train_batch_size {config.train_batch_size} does not split over the {world_size} launched processes: it is "
            f"the global batch, each process trains an equal share; use a multiple of {world_size} such as {low} or "
            f"{low + world_size}"))]
    return []


class MicroBatch(NamedTuple):
    rows: slice  # this rank's rows of the step's drawn batch
    last: bool  # the step's last micro-batch: DDP syncs the gradients after its backward


def micro_batches(n: int, parts: int, dist: Distributed) -> list[MicroBatch]:
    """The step's ``n`` drawn examples as ``parts`` consecutive micro-batches, each split evenly over the ranks:
    this rank's rows of each. With one part and one process: all the rows, as before accumulation existed."""
    size = n // parts
    out = []
    for index in range(parts):
        share = dist.shard(size)
        out.append(MicroBatch(slice(index * size + share.start, index * size + share.stop), index == parts - 1))
    return out


def scratch_dir(dist: Distributed) -> Path:
    """Where a rank other than 0 puts what it must compute but not keep (FSDP's validation samples); removed at close."""
    if dist._scratch is None:
        dist._scratch = Path(tempfile.mkdtemp(prefix=f"layersync-rank{dist.rank}-"))
    return dist._scratch


class RankEvents:
    """The events of a rank other than 0: nothing is written (rank 0 writes the run's one events file);
    warnings and errors go to stderr, into the worker's log, with the rank."""

    def __init__(self, rank: int):
        self.rank = rank

    def emit(self, event: str, **fields) -> None:
        if event == "error":
            print(f"rank {self.rank}: error: {fields.get('message')}", file=sys.stderr, flush=True)

    def log(self, message: str, level: str = "info") -> None:
        if level != "info":
            print(f"rank {self.rank}: {level}: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass

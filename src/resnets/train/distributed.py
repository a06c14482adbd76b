"""Data parallelism under `torchrun`: who this process is, and the few collectives training needs.

`torchrun --nproc-per-node N -m resnets train ...` starts N processes (and `--nnodes M` on M
machines); each learns its place from the environment torchrun sets (RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE). The engine is PyTorch's own: `torch.distributed` with gloo on
CPUs and NCCL on CUDA, DistributedDataParallel averaging the gradients.

What a run means does not depend on the number of processes: `batch_size` is the global batch.
Every process builds batch i of epoch e exactly as one process would (the same order, the same
augmentation draws) and keeps its slice, `World.part` (resnets.data.Loader's `part`). Rank 0
alone writes the run directory; every rank reads the checkpoint it resumes from, sent by rank 0.

BatchNorm: each process normalises its own slice (as in the paper's multi-GPU training), unless
`sync_bn` converts it (CUDA only). DDP does not broadcast BatchNorm buffers every step here;
instead their running averages are averaged over the processes before every evaluation and
checkpoint (`average_buffers`), so the running mean is that of the whole global batch.

Everything device-specific is in small named functions (`rank_device`, `backend_for`,
`convert_sync_bn`), which `benchmarks/gpu_check.py` runs on a CUDA machine.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from resnets.errors import DistributedFailure, UserError  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training job."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    restarts: int = 0       # how many times torchrun restarted the group (TORCHELASTIC_RESTART_COUNT)
    max_restarts: int = 0   # torchrun --max-restarts
    run_id: str | None = None  # torchrun's rendezvous id, the same across restarts
    launched: bool = False  # started by torchrun (even as its only process)
    # torchrun's own store (MASTER_ADDR:MASTER_PORT) outlives a restart, with what the last
    # attempt wrote in it (TORCHELASTIC_USE_AGENT_STORE)
    shared_store: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def part(self) -> tuple[int, int]:
        """(rank, size): this process's slice of each global batch."""
        return self.rank, self.size


def world_from_environment(environ: Mapping[str, str] | None = None) -> World:
    """The World torchrun's variables describe (a single process when they are absent)."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()

    def number(key: str, default: int) -> int:
        text = env.get(key, "")
        if not text:
            return default
        if not text.isdigit():
            raise UserError(f"environment variable {key}={text!r} is not a number: start "
                            f"distributed training with torchrun")
        return int(text)

    size, rank = number("WORLD_SIZE", 1), number("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} does not fit WORLD_SIZE={size}: start distributed "
                        f"training with torchrun")
    run_id = env.get("TORCHELASTIC_RUN_ID") or None
    return World(rank=rank, size=size, local_rank=number("LOCAL_RANK", 0),
                 local_size=number("LOCAL_WORLD_SIZE", 1),
                 restarts=number("TORCHELASTIC_RESTART_COUNT", 0),
                 max_restarts=number("TORCHELASTIC_MAX_RESTARTS", 0),
                 run_id=None if run_id == "none" else run_id, launched=True,
                 shared_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")


def current_world() -> World:
    """The World of this process: torchrun's, once its process group is up."""
    return world_from_environment()


# ----------------------------------------------------------- the device-specific branches
def rank_device(setting: str, world: World) -> str:
    """The device setting of one process: under torchrun, CUDA processes take the GPU of their
    local rank ("auto" and "cuda" become cuda:LOCAL_RANK); a CPU stays the CPU."""
    if not world.distributed:
        return setting
    if setting in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    if setting.startswith("cuda:"):
        raise UserError(f"device {setting!r}: under torchrun each process takes the GPU of its "
                        f"local rank; give --device cuda (or auto)")
    if setting == "mps":
        raise UserError("device mps: torchrun training runs on CUDA or the CPU")
    return setting


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def convert_sync_bn(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """BatchNorm layers as SyncBatchNorm (statistics over the global batch): CUDA only."""
    if device.type != "cuda":
        raise UserError("sync_bn needs CUDA: SyncBatchNorm does not run on the CPU (gloo); "
                        "train without --sync-bn (each process normalises its own slice of the "
                        "batch, as the paper's multi-GPU training did)")
    if not world.distributed:
        return model  # one process already sees the whole batch
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# ------------------------------------------------------------------- the process group
@contextlib.contextmanager
def process_group(world: World, device: torch.device, timeout_s: float) -> Iterator[World]:
    """Join torchrun's process group for the block (nothing for a single process, or when the
    caller already joined one); leave it at the end."""
    if not world.distributed or dist.is_initialized():
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    try:
        if world.shared_store:
            dist.init_process_group(backend_for(device), store=_attempt_store(world, timeout),
                                    rank=world.rank, world_size=world.size, timeout=timeout)
        else:
            dist.init_process_group(backend_for(device), timeout=timeout)
    except (RuntimeError, ValueError) as error:
        raise DistributedFailure(f"rank {world.rank}: cannot join the other {world.size - 1} "
                                 f"process(es): {_first_line(error)}") from None
    yield world
    # Only on success: after a failed collective, leaving the group can wait forever on the
    # dead or hung peer; the process is about to exit, which frees everything anyway. All
    # ranks leave together: a rank that tore its connections down while rank 0 was still
    # writing the run's last files was seen once to make a peer's gloo abort (SIGABRT,
    # "terminate called without an active exception") after the run had finished.
    with contextlib.suppress(RuntimeError):
        dist.barrier()
    dist.destroy_process_group()


def _attempt_store(world: World, timeout: timedelta) -> dist.Store:
    """torchrun's store, seen through a prefix of its own for this attempt of the group.

    torchrun (static and c10d rendezvous alike) keeps one store for the whole job, and a
    restarted group finds in it the keys its predecessor wrote, among them where each rank's
    gloo (or NCCL) listens. Read before the new rank overwrites it, such an address is the
    dead process's: the connection is refused, or retried until the timeout (the group hangs).
    TORCHELASTIC_RESTART_COUNT names the attempt: the same on every process of one machine
    (torchrun counts restarts per machine; on several, they agree when every machine restarted
    for a failure, not when one only took in a new member)."""
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world.size, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"resnets/attempt-{world.restarts}", store)


@contextlib.contextmanager
def session(device_setting: str, timeout_s: float) -> Iterator[tuple[World, torch.device]]:
    """(this process's World, its device), inside torchrun's process group for the block (a
    no-op for one process, or inside a group already joined)."""
    from resnets.train.device import resolve_device

    world = current_world()
    device = resolve_device(rank_device(device_setting, world))
    with process_group(world, device, timeout_s):
        yield world, device


def wrap_model(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """The model that training steps call: DistributedDataParallel across processes (which also
    makes every rank start from rank 0's weights), the model itself for one process."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None, forward_sync_buffers=False,
                                   gradient_as_bucket_view=True)


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Elementwise sum of `values` over the processes (in place; itself for one process)."""
    if world.distributed:
        dist.all_reduce(values)
    return values


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every process when `flag` is true on any: so all stop at the same step."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_buffers(model: nn.Module, world: World) -> None:
    """Average the floating-point buffers (BatchNorm's running mean and variance) over the
    processes, so every rank evaluates, and rank 0 saves, the same statistics."""
    if not world.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= world.size


def broadcast_text(text: str | None, world: World, device: torch.device) -> str:
    """Rank 0's `text`, on every process."""
    if not world.distributed:
        return text or ""
    data = _broadcast_bytes((text or "").encode() if world.main else b"", world, device)
    return data.decode()


def broadcast_checkpoint(checkpoint: dict | None, world: World, device: torch.device
                         ) -> dict | None:
    """Rank 0's checkpoint (or None) on every process, so the others need not see its file
    system: sent as torch.save bytes and read back with weights_only=True."""
    if not world.distributed:
        return checkpoint
    payload = b""
    if world.main and checkpoint is not None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        payload = buffer.getvalue()
    data = _broadcast_bytes(payload, world, device)
    if not data:
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _broadcast_bytes(data: bytes, world: World, device: torch.device) -> bytes:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    where = device if backend_for(device) == "nccl" else torch.device("cpu")
    length = torch.tensor([len(data)], dtype=torch.long, device=where)
    dist.broadcast(length, src=0)
    size = int(length.item())
    if size == 0:
        return b""
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(where) if world.main
              else torch.empty(size, dtype=torch.uint8, device=where))
    dist.broadcast(buffer, src=0)
    return buffer.cpu().numpy().tobytes()


@contextlib.contextmanager
def collective_errors(world: World, last_checkpoint: Callable[[], str]) -> Iterator[None]:
    """Turn a failed or timed-out collective (another process died or hung) into one line that
    says what happened, then `last_checkpoint()`: where the run can go on from."""
    if not world.distributed:
        yield
        return
    try:
        yield
    except (dist.DistBackendError, dist.DistError, RuntimeError) as error:
        text = _first_line(error)
        if isinstance(error, RuntimeError) and not isinstance(error, dist.DistError) \
                and not _looks_collective(text):
            raise
        timed_out = "timeout" in text.lower() or "timed out" in text.lower()
        what = ("another process did not answer in time (it hangs or is too slow: "
                "--dist-timeout)" if timed_out else "lost contact with another process")
        raise DistributedFailure(f"rank {world.rank}: {what}: {text}; {last_checkpoint()}"
                                 ) from None


def _looks_collective(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in ("gloo", "nccl", "connection", "timed out",
                                            "timeout", "peer", "socket", "store"))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

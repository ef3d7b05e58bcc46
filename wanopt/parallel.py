"""Several GPUs under torchrun: the process group from torchrun's environment, the all-to-all of sequence parallel,
and the few collectives a capture needs (a barrier, rank 0's answer for everyone, every rank's numbers on rank 0).

    torchrun --nproc-per-node 2 -m wanopt capture --workload t2v-a14b-720p-sp2 ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in each process's environment;
`init_from_env` reads them. One process per GPU with NCCL; gloo when there is no GPU (CI runs the tiny workload as
two CPU processes). Without torchrun (WORLD_SIZE unset) everything here reports a world of one.

Imports nothing from stages or profiling: both import it.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# NVLink multicast (NVLS) must stay off on the lent machines; set before the first NCCL call, and in the
# environment so that every child process (compile workers, NCCL's own) inherits it.
NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                        "NVSHMEM_DISABLE_NVLS": "1"}
# A single-GPU stage is captured on rank 0 alone (compile, warm-up, repeats and a trace of 20 s steps at 720p) while
# the other ranks wait at a barrier: the default 10-minute collective timeout would kill them.
TIMEOUT = datetime.timedelta(hours=2)


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ


def env_world_size() -> int:
    """The world size torchrun asked for (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env() -> str:
    """Join the process group torchrun describes; returns the backend ("nccl" on GPUs, each rank on the GPU of
    its LOCAL_RANK; "gloo" on CPUs). Idempotent."""
    if not launched_by_torchrun():
        raise RuntimeError("no torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK): launch with `torchrun "
                           "--nproc-per-node N -m wanopt ...` for a workload of world size N")
    if dist.is_initialized():
        return dist.get_backend()
    for key, value in NVLINK_MULTICAST_OFF.items():
        os.environ.setdefault(key, value)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s): run "
                               f"torchrun with --nproc-per-node at most {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        # bound to its GPU: barriers and object collectives use it without guessing (and without a warning)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=torch.device("cuda", local))
        return "nccl"
    dist.init_process_group("gloo", timeout=TIMEOUT)
    return "gloo"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def backend() -> str | None:
    return dist.get_backend() if is_distributed() else None


def barrier():
    if is_distributed():
        dist.barrier()


def from_rank0(make):
    """make() on rank 0, its result on every rank (a choice or a measurement that all ranks must share)."""
    if not is_distributed():
        return make()
    box = [make() if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Every rank's value (any picklable object), on every rank, in rank order."""
    if not is_distributed():
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def check_same_everywhere(what: str, value, fix: str):
    """Raise on every rank when the ranks disagree on `value` (e.g. a fingerprint of the weights)."""
    values = gather(value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"the ranks disagree on {what}: " + ", ".join(f"rank {r}: {v}" for r, v in
                                                                        enumerate(values)) + f". {fix}")


def destroy():
    if is_distributed():
        dist.destroy_process_group()


# -- Ulysses sequence parallel: tokens sharded across ranks <-> heads sharded across ranks -------------------------


def seq_to_heads(x: torch.Tensor, group=None) -> torch.Tensor:
    """[B, L/N, H, D] on each rank (its tokens, all heads) -> [B, L, H/N, D] (all tokens, its heads)."""
    n = dist.get_world_size(group)
    b, s, h, d = x.shape
    send = x.reshape(b, s, n, h // n, d).permute(2, 0, 1, 3, 4).contiguous()  # chunk i: the heads of rank i
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv chunk j: rank j's tokens of this rank's heads
    return recv.permute(1, 0, 2, 3, 4).reshape(b, n * s, h // n, d)


def heads_to_seq(x: torch.Tensor, group=None) -> torch.Tensor:
    """The inverse of seq_to_heads: [B, L, H/N, D] -> [B, L/N, H, D]."""
    n = dist.get_world_size(group)
    b, length, hn, d = x.shape
    send = x.reshape(b, n, length // n, hn, d).permute(1, 0, 2, 3, 4).contiguous()  # chunk j: rank j's tokens
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv chunk i: this rank's tokens of rank i's heads
    return recv.permute(1, 2, 0, 3, 4).reshape(b, length // n, n * hn, d)

"""wanopt.parallel outside and inside a process group: a world of one without torchrun, and a gloo group joined
from torchrun's environment variables (a world of one in this process; two ranks in tests/test_parallel_capture)."""

import os
import socket

import pytest

from wanopt import parallel


def test_without_torchrun_everything_is_a_world_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not parallel.launched_by_torchrun() and parallel.env_world_size() == 1
    assert (parallel.rank(), parallel.world_size(), parallel.backend()) == (0, 1, None)
    assert parallel.from_rank0(lambda: "chosen") == "chosen" and parallel.gather(3.5) == [3.5]
    parallel.check_same_everywhere("a number", 1.0, "no fix needed")
    with pytest.raises(RuntimeError, match="launch with `torchrun --nproc-per-node N"):
        parallel.init_from_env()


def test_joining_from_torchruns_environment_turns_nvlink_multicast_off(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    for key in parallel.NVLINK_MULTICAST_OFF:
        monkeypatch.delenv(key, raising=False)
    try:
        assert parallel.init_from_env() == "gloo" and parallel.init_from_env() == "gloo"  # joined once
        assert {k: os.environ[k] for k in parallel.NVLINK_MULTICAST_OFF} == parallel.NVLINK_MULTICAST_OFF
        assert (parallel.rank(), parallel.world_size(), parallel.backend()) == (0, 1, "gloo")
        assert parallel.gather({"ms": 2.0}) == [{"ms": 2.0}] and parallel.from_rank0(lambda: 7) == 7
    finally:
        parallel.destroy()
    assert not parallel.is_distributed()


def _disagree(rank, store, result):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        parallel.check_same_everywhere("the weights", [1.0, float(rank)], "build them the same way")
    except RuntimeError as exc:
        if rank == 0:
            with open(result, "w") as f:
                f.write(str(exc))
    finally:
        dist.destroy_process_group()


def test_ranks_that_built_different_models_are_stopped_with_both_values(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_disagree, args=(str(tmp_path / "store"), str(tmp_path / "error.txt")), nprocs=2, join=True)
    assert (tmp_path / "error.txt").read_text() == ("the ranks disagree on the weights: rank 0: [1.0, 0.0], rank 1: "
                                                    "[1.0, 1.0]. build them the same way")

"""Sequence parallel (Ulysses) against the single-process forward: world sizes 2, 4 and 8 as gloo process groups of
CPU processes (the world sizes of the 2-, 4- and 8-GPU runs), the tiny T2V DiT in fp32 (8 heads of 32, so 4 ranks
hold 2 heads each and 8 ranks one), lean and fused forms.

Tolerance 1e-5: the sharded forward runs the same math; only the attention kernel's shapes (heads per call) and the
GEMMs' row counts differ, which reorders fp32 sums. A shard in the wrong place or a head sent to the wrong rank gives
O(1) (the last test)."""

import dataclasses

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import fp32_model
from wanopt.configs import get_config
from wanopt.measure import rel_l2

CONFIG = dataclasses.replace(get_config("tiny").dit, dim=256, ffn_dim=384, num_heads=8)
FP32_ROUNDING = 1e-5


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, CONFIG.in_dim, 2, 8, 8, generator=g)  # 2 × 4 × 4 = 32 tokens per sample
    return x, torch.tensor([900.0, 900.0]), torch.randn(2, 7, CONFIG.text_dim, generator=g)


def _rank(rank, world, store, result_path, fused, swap, backend="gloo"):
    import importlib

    from wanopt.stages.dtype_hygiene import lean_model

    # the module (the package's `sequence_parallel` is the stage function): the swap below replaces its heads_to_seq
    sp = importlib.import_module("wanopt.stages.sequence_parallel")

    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = lean_model(fp32_model(CONFIG))
        if fused:
            from wanopt.stages.fusion import fuse_model

            fuse_model(model, gelu_epilogue=False)
        x, t, ctx = _inputs()
        if backend == "nccl":  # one GPU per rank; fp32 needs an SDPA kernel that takes it
            torch.cuda.set_device(rank)
            model.cuda().set_attention_backend("efficient")
            x, t, ctx = x.cuda(), t.cuda(), ctx.cuda()
        with torch.no_grad():
            ref = model(x, t, ctx)
            sp.sequence_parallel_model(model)
            if swap:  # what the tolerance guards against: heads returned to the wrong ranks
                original = sp.heads_to_seq
                sp.heads_to_seq = lambda y, group=None: original(y.roll(1, dims=2), group)
            out = model(x, t, ctx)
        if rank == 0:
            torch.save({"ref": ref.cpu(), "out": out.cpu()}, result_path)
    finally:
        dist.destroy_process_group()


def run(world, tmp_path, fused=False, swap=False, backend="gloo"):
    name = f"{world}-{fused}-{swap}-{backend}"  # a file store serves one process group: one per run
    out = tmp_path / f"result-{name}.pt"
    mp.spawn(_rank, args=(world, str(tmp_path / f"store-{name}"), str(out), fused, swap, backend), nprocs=world,
             join=True)
    return torch.load(out)


@pytest.mark.parametrize("world", [2, 4, 8])
def test_sharded_forward_equals_the_single_process_one(world, tmp_path):
    r = run(world, tmp_path)
    assert r["out"].shape == r["ref"].shape
    assert rel_l2(r["out"], r["ref"]) <= FP32_ROUNDING


def test_sharded_fused_forward_equals_the_single_process_one(tmp_path):
    r = run(2, tmp_path, fused=True)
    assert rel_l2(r["out"], r["ref"]) <= FP32_ROUNDING


def test_heads_on_the_wrong_rank_are_far_outside_the_tolerance(tmp_path):
    r = run(2, tmp_path, swap=True)
    assert rel_l2(r["out"], r["ref"]) > 1e3 * FP32_ROUNDING


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_sharded_forward_over_nccl_on_two_gpus(tmp_path, monkeypatch):
    """The same check with NCCL's all-to-all between two GPUs (NVLink multicast left off, children included)."""
    for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                       ("NVSHMEM_DISABLE_NVLS", "1")):
        monkeypatch.setenv(key, value)
    for fused in (False, True):
        r = run(2, tmp_path, fused=fused, backend="nccl")
        assert rel_l2(r["out"], r["ref"]) <= FP32_ROUNDING


def test_world_size_must_divide_the_heads_and_a_group_must_exist():
    from wanopt.stages.dtype_hygiene import lean_model
    from wanopt.stages.sequence_parallel import sequence_parallel_model

    with pytest.raises(RuntimeError, match="needs torch.distributed initialized: run under `torchrun"):
        sequence_parallel_model(lean_model(fp32_model(CONFIG)))

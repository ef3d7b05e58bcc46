"""Sequence parallel (Ulysses) for the T2V DiT: the video tokens sharded across the ranks of a process group.

What changes, on a lean model (stage 04 on; the fused and compiled forms too): after the patch embedding each rank
keeps its contiguous share of the L video tokens (L must divide by the world size N: every real workload's does),
with the RoPE rows of those positions. Everything per token stays local: the norms and modulation, q/k/v and their
RMSNorm + RoPE, cross-attention to the (replicated) text, the FFN, the head. Around self-attention two all-to-alls
(`torch.distributed.all_to_all_single`) turn [B, L/N, heads, d] into [B, L, heads/N, d], so that each rank attends
over the whole sequence for its share of the heads, and back. The head's output is gathered once per forward.
N must divide the heads (1.3B: 12, A14B: 40). Both 14B experts stay resident on every rank: they fit an H200's
memory, so no FSDP is needed at this size. Exact up to rounding: the same math, attention kernels of other shapes.
What it should buy: per rank 1/N of the GEMMs and of the attention, for two all-to-alls of q, k, v and one of the
output per layer (4·B·L·dim/N elements per rank).

CUDA graphs (stage 08) are taken off the model by this stage: the collectives run eagerly between compiled blocks.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch.profiler import record_function

from ..models.layers import attention
from ..parallel import heads_to_seq, seq_to_heads


class UlyssesSelfAttention:
    """Mixed in before a lean self-attention class: the same projections and kernels, attention over the whole
    sequence for this rank's heads."""

    def forward(self, x, rope):
        b, s = x.shape[:2]
        q, k, v = self.project_qkv(x)
        q = self.kernels.qk_norm_rope(q, self.norm_q.weight, self.norm_q.eps, rope, self.num_heads)
        k = self.kernels.qk_norm_rope(k, self.norm_k.weight, self.norm_k.eps, rope, self.num_heads)
        v = v.reshape(b, s, self.num_heads, -1)
        with record_function("all_to_all"):
            q, k, v = (seq_to_heads(t.to(v.dtype), self.sp_group) for t in (q, k, v))
        out = attention(q, k, v, self.attn_backend)
        with record_function("all_to_all"):
            out = heads_to_seq(out, self.sp_group)
        return self.o(out.flatten(2))


class SequenceParallelModel:
    """Mixed in before a lean WanModel class: shard after the patch embedding, gather after the head."""

    def forward(self, x, t, context):
        t = self.as_timesteps(t, x)
        self.check_inputs(x, t, context)
        c, group = self.config, self.sp_group
        n, r = dist.get_world_size(group), dist.get_rank(group)
        with record_function("patch_embed"):
            x = self.patch_embedding(x)
            b, grid = x.size(0), tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2)
            length = x.size(1)
            if length % n:
                raise ValueError(f"sequence parallel over {n} ranks needs the {length} video tokens of grid {grid} to "
                                 f"divide by {n}; use a world size that divides {length}")
            shard = slice(r * length // n, (r + 1) * length // n)
            x = x[:, shard].contiguous()
            cos, sin = self.rope_tables(grid, x.dtype, x.device)
            rope = (cos[shard], sin[shard])
        with record_function("time_embed"):
            e, e0 = self.embed_time(t.reshape(b, -1))
            if e.size(1) > 1:  # one embedding per token: this rank's tokens
                e, e0 = e[:, shard], e0[:, shard]
        with record_function("text_embed"):
            context = self.embed_text(context)
        for i, block in enumerate(self.blocks):
            with record_function(f"block{i:02d}"):
                x = block(x, e0, rope, context)
        with record_function("head"):
            x = self.head(x, e).contiguous()
        with record_function("all_gather"):
            parts = [torch.empty_like(x) for _ in range(n)]
            dist.all_gather(parts, x, group=group)
            x = torch.cat(parts, dim=1)
        (f, h, w), (pt, ph, pw) = grid, c.patch_size
        x = x.view(b, f, h, w, pt, ph, pw, c.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, c.out_dim, f * pt, h * ph, w * pw).float()


@functools.cache  # one class per pair: a new class per block would make torch.compile recompile per block
def _mixed(mixin, cls):
    return type(f"{mixin.__name__}{cls.__name__}", (mixin, cls), {"__module__": __name__})


def sequence_parallel_model(model, group=None):
    """Shard a lean WanModel's sequence over `group` (default: the default process group), in place."""
    from .dtype_hygiene import LeanWanModel

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence_parallel needs torch.distributed initialized: run under `torchrun "
                           "--nproc-per-node N` (NCCL on GPUs), or dist.init_process_group('gloo', ...) on CPUs")
    if not isinstance(model, LeanWanModel):
        raise TypeError("sequence_parallel shards the lean model: apply 04_dtype_hygiene (and the stages after it) "
                        "first")
    n = dist.get_world_size(group)
    if model.config.num_heads % n:
        raise ValueError(f"sequence parallel over {n} ranks needs the {model.config.num_heads} heads to divide by "
                         f"{n}; use a world size that divides {model.config.num_heads}")
    model.__class__ = _mixed(SequenceParallelModel, type(model))
    model.sp_group = group
    for block in model.blocks:
        attn = block.self_attn
        attn.__class__ = _mixed(UlyssesSelfAttention, type(attn))
        attn.sp_group = group
    return model


def sequence_parallel(pipe, group=None):
    for name, model in list(pipe.experts.items()):
        inner = getattr(model, "model", model)  # stage 08's graph wrapper: collectives stay out of the graphs
        pipe.experts[name] = sequence_parallel_model(inner, group)
    pipe.world_size = dist.get_world_size(group)
    return pipe

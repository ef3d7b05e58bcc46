"""Matrix-Game-2 stages 01 and 02: the KV caches without host syncs, then without rolling.

Every cached attention (self-attention per layer, mouse and keyboard per action block) goes through a cache's
`attend(q, k, v, start, attention)`; these stages swap the cache objects of a pipeline's KVCache in place, so the
model code is untouched.

01 `host_cache_indices`. What changes: the rolling cache's end indices (upstream keeps them as 1-element tensors on
the GPU and reads them back with `.item()` 3 to 6 times per cached attention, about 800 host syncs per block) are
Python ints on the host; the roll, the writes and the window are the same operations on the same data. Exact
(bit for bit). What it should buy: the host no longer waits for the GPU inside every attention, so it can queue
kernels ahead; the GPU idles less between launches. The kernels do not change.

02 `ring_kv_cache`. What changes: each cache becomes a preallocated ring of `local_attn_size` frame slots; latent
frame a is written to slot a mod W by index (the denoising evals of a block overwrite their own slots, the
cache-refresh writes the clean K/V there, as upstream), and attention reads the whole ring once it is full (the
slots written so far before that): no roll, no clone, one fixed shape per phase. The window holds the same frames
as upstream's (the last W frames up to the block's end), in ring order instead of time order. Exact up to the
order of the keys: softmax attention does not depend on it, the kernel's summation order does (fp32 rounding
inside the kernel, bf16 rounding of its output). What it should buy: the copies of the roll (2 × 2640 × 12 × 128
bf16 per layer per new block, and the action caches' shifts) and, with fixed shapes and no host reads, the
precondition for CUDA graphs.
"""

from __future__ import annotations

from ..models.causal import RollingKV


class HostIndexedKV(RollingKV):
    """RollingKV with its end indices on the host: the same roll, writes and window, no `.item()`."""

    def attend(self, q, k, v, start: int, attention):
        n, size, sink = k.size(1), self.k.size(1), self.sink
        end = start + n
        if end > self.global_end and n + self.local_end > size:
            evicted = n + self.local_end - size
            rolled = self.local_end - evicted - sink
            self.k[:, sink:sink + rolled] = self.k[:, sink + evicted:sink + evicted + rolled].clone()
            self.v[:, sink:sink + rolled] = self.v[:, sink + evicted:sink + evicted + rolled].clone()
            local_end = self.local_end + end - self.global_end - evicted
        else:
            local_end = self.local_end + end - self.global_end
        self.k[:, local_end - n:local_end] = k
        self.v[:, local_end - n:local_end] = v
        lo = max(0, local_end - size)
        out = attention(q, self.k[:, lo:local_end], self.v[:, lo:local_end])
        self.global_end, self.local_end = end, local_end
        return out

    def reset(self):
        self.k.zero_()
        self.v.zero_()
        self.global_end = self.local_end = 0


class RingKV(RollingKV):
    """A ring of W frame slots of `per_frame` positions each: frame a lives in slot a mod W."""

    def attend(self, q, k, v, start: int, attention):
        p, slots = self.per_frame, self.k.size(1) // self.per_frame
        if start % p or k.size(1) % p:
            raise ValueError(f"the ring cache writes whole frames of {p} positions; got start {start}, "
                             f"{k.size(1)} new positions")
        first, frames = start // p, k.size(1) // p
        for i, run in _runs(first, frames, slots):  # one or two contiguous runs of slots
            self.k[:, run.start * p:run.stop * p] = k[:, i * p:(i + len(run)) * p]
            self.v[:, run.start * p:run.stop * p] = v[:, i * p:(i + len(run)) * p]
        end = first + frames
        if end >= slots:
            return attention(q, self.k, self.v)
        return attention(q, self.k[:, :end * p], self.v[:, :end * p])  # filling: frames 0..end-1 in slots 0..end-1

    def reset(self):
        self.k.zero_()
        self.v.zero_()


def _runs(first: int, frames: int, slots: int):
    """(offset into the new frames, range of slots) for frames first..first+frames-1 in slots mod `slots`."""
    if frames > slots:
        raise ValueError(f"a block of {frames} frames does not fit a ring of {slots} frame slots")
    a = first % slots
    head = min(frames, slots - a)
    yield 0, range(a, a + head)
    if head < frames:
        yield head, range(0, frames - head)


def _caches(pipe):
    """(layer cache, attribute, positions per frame) for every rolling cache of the pipeline's KVCache."""
    s = pipe.config.frame_seq_length
    for layer in pipe.cache.layers:
        yield layer, "self_attn", s
        for name in ("mouse", "keyboard"):
            if getattr(layer, name) is not None:
                yield layer, name, 1


def host_cache_indices(pipe):
    for layer, name, _ in _caches(pipe):
        cache = getattr(layer, name)
        if type(cache) is not RollingKV:
            raise ValueError(f"host_cache_indices converts upstream's RollingKV caches; this pipeline's are already "
                             f"{type(cache).__name__}: apply each stage once, in the order of MG2_STAGES")
        global_end, local_end = int(cache.global_end.item()), int(cache.local_end.item())  # once, at apply time
        cache.__class__ = HostIndexedKV
        cache.global_end, cache.local_end = global_end, local_end
    return pipe


def ring_kv_cache(pipe):
    if pipe.config.sink_size:
        raise ValueError(f"ring_kv_cache keeps no sink frames; {pipe.config.name} has sink_size "
                         f"{pipe.config.sink_size}: leave this stage out for it")
    for layer, name, per_frame in _caches(pipe):
        cache = getattr(layer, name)
        cache.__class__ = RingKV
        cache.per_frame = per_frame
        cache.reset()  # a video starts empty: apply the stage between videos
    return pipe

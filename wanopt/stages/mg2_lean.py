"""Matrix-Game-2 stage 03, dtype hygiene: the same causal model with upstream's per-call detours taken out, and a
pipeline that prepares each block's position-dependent tensors once.

What changes (same parameters, new forward: the modules' classes are swapped for the lean ones below):
  - RoPE from real fp32 cos/sin tables of the block's frames, built once per block, instead of every q and k going
    to complex128 and back on every call (30 layers × 2 per eval); the rotation is computed in fp32 and rounded once;
  - attention takes [1, L, heads, head_dim] bf16 as it is: no `flash_attention()` packing, no float32 q cast back
    to bf16, no cu_seqlens host-to-device copies;
  - the per-frame modulation and the gated residuals are one `addcmul` pass each over [frames, tokens, dim] views
    (upstream: `norm(x) * (1 + scale) + shift`, two rounded passes, and `x + y * gate`, two more);
  - the CLIP image embedding runs only when the cross-attention K/V are computed (upstream runs it every call and
    throws it away);
  - the action module: its windows are sliced once per block to the frames of the block (upstream cuts a Python
    list of slices of every action since frame 0 on every call), tokens stay frame-major (no location-major copies
    of the hidden state), the keyboard queries of all locations attend to the cached frames at once instead of the
    cache being `.repeat`-ed to every location, and RoPE turns only the 8 channels that rotate (the other 56 have
    angle 0: upstream multiplies them by cos 0 = 1 and adds sin 0 = 0 in fp32, which leaves them bit for bit).
Not exact: the fp32 rotation rounds once where upstream rounds the float64 rotation to float32 and then to bf16,
and `addcmul` rounds once where upstream rounds twice; the error against the baseline is measured.
What it should buy: the per-call complex128 RoPE (4 passes in float64 over q and k per layer), the casts around it,
and a good part of the small elementwise kernels between small GEMMs that fill the baseline's trace.

The pipeline (`LeanCausalPipeline`) runs a block as one function of tensors, `run_block(key, tensors)`, with every
host-side decision made before it (which frames, which cache slots, the fresh noise drawn up front in upstream's
order from the same generator): stage 07 records that function as one CUDA graph per `key`, and stage 08 changes
what it computes.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.profiler import record_function

from ..models.action import ActionModule, action_rope_table
from ..models.causal import CausalWanBlock, CausalWanModel, CrossAttnKV, ImageCrossAttention, CausalSelfAttention
from ..models.layers import attention, sinusoidal_embedding_1d
from ..pipelines.causal import CausalPipeline
from .dtype_hygiene import EAGER_KERNELS, rope_cos_sin


def attend_segments(cache, q, k, v, segments, q_per_frame: int, kv_per_frame: int, attention_fn):
    """A cached attention over consecutive segments of frames ((start_frame, frames), ...), each written to the cache
    and attending to the window as it stands after its own write, one after the other (one segment: one call)."""
    outs, iq, ik = [], 0, 0
    for start, frames in segments:
        nq, nk = frames * q_per_frame, frames * kv_per_frame
        outs.append(cache.attend(q[:, iq:iq + nq], k[:, ik:ik + nk], v[:, ik:ik + nk], start * kv_per_frame,
                                 attention_fn))
        iq, ik = iq + nq, ik + nk
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def rotate_first(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Upstream's action RoPE on the channels that turn: x [..., head_dim], cos/sin [..., n] broadcastable, the
    first n channels rotated as interleaved pairs in fp32 (upstream's formula), the rest passed through as they are."""
    n = cos.size(-1)
    head = x[..., :n].float()
    a, b = head.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)
    return torch.cat([(head * cos + rotated * sin).type_as(x), x[..., n:]], dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Lean modules (same parameters as the reference ones)


class LeanCausalSelfAttention(CausalSelfAttention):
    def project_qkv(self, x):
        return self.q(x), self.k(x), self.v(x)

    def attention_fn(self, q, k, v):
        return attention(q, k, v, self.attn_backend)


class LeanImageCrossAttention(ImageCrossAttention):
    def project_kv(self, context):
        return self.k(context), self.v(context)

    def init_kv(self, context, cache: CrossAttnKV):
        """The CLIP tokens' K/V, once per video (upstream: on the first call)."""
        k, v = self.project_kv(context)
        b = context.size(0)
        cache.k.copy_(self.kernels.qk_norm_rope(k, self.norm_k.weight, self.norm_k.eps, None, self.num_heads))
        cache.v.copy_(v.view(b, -1, self.num_heads, self.head_dim))
        cache.is_init = True


class LeanActionModule(ActionModule):
    """Frame-major throughout; `inputs` holds this call's windows and RoPE rows (LeanCausalWanModel.block_inputs)."""

    def attention_fn(self, q, k, v):
        return attention(q, k, v, self.attn_backend)

    def forward(self, x, inputs, segments, mouse_cache, keyboard_cache):
        parts = self.parts
        cos, sin = inputs["action_cos"], inputs["action_sin"]
        if self.config.enable_mouse:
            with record_function("mouse"):
                q, k, v = parts.mouse_qkv(self, x, inputs["mouse_windows"], cos, sin)
                out = attend_segments(mouse_cache, q, k, v, segments, 1, 1, self.attention_fn)
                x = parts.mouse_out(self, x, out)
        with record_function("keyboard"):
            q, k, v = parts.keyboard_qkv(self, x, inputs["keyboard_windows"], cos, sin)
            s = q.size(1) // k.size(1)
            # every location's query attends to the same cached frames: one attention over all of them
            out = attend_segments(keyboard_cache, q, k, v, segments, s, 1, self.attention_fn)
            return parts.keyboard_out(self, x, out)

    def mouse_hidden(self, x, windows):
        """The mouse MLP's input Linear over [hidden state ‖ its frame's window], frame-major [F, S, ·]."""
        f, s = windows.size(0), x.size(1) // windows.size(0)
        h = torch.cat([x.view(f, s, -1), windows[:, None].expand(f, s, windows.size(-1))], dim=-1)
        return self.mouse_mlp[0](h)


# -- the block's pieces between its cached attentions: functions of tensors only (stage 06 compiles them) --------


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[1, F·S, C] tokens as [F, S, C] rows: a per-frame [F, 1, C] table broadcasts over each frame's tokens."""
    return x.view(frames, -1, x.size(-1))


def self_qkv(block, x, shift, scale, rope):
    """norm1 + per-frame modulate, the q/k/v projections, RMSNorm + RoPE of q and k: [1, L, heads, head_dim] each."""
    attn, f = block.self_attn, shift.size(0)
    h = block.kernels.norm_modulate(per_frame(x, f), 1 + scale[:, None], shift[:, None], block.norm1.eps)
    q, k, v = attn.project_qkv(h.view_as(x))
    v = v.view(*x.shape[:2], attn.num_heads, -1)
    q = block.kernels.qk_norm_rope(q, attn.norm_q.weight, attn.norm_q.eps, rope, attn.num_heads).to(v.dtype)
    k = block.kernels.qk_norm_rope(k, attn.norm_k.weight, attn.norm_k.eps, rope, attn.num_heads).to(v.dtype)
    return q, k, v


def self_out(block, x, y, gate):
    """Output projection and the gated residual, one addcmul per frame."""
    f = gate.size(0)
    return torch.addcmul(per_frame(x, f), per_frame(block.self_attn.o(y.flatten(2)), f), gate[:, None]).view_as(x)


def cross(block, x, k, v):
    """norm3, the image cross-attention over the cached CLIP K/V, the residual."""
    norm3, attn = block.norm3, block.cross_attn
    h = norm3(x) if getattr(norm3, "weight", None) is None else block.kernels.norm_modulate(
        x, norm3.weight, norm3.bias, norm3.eps)
    q = block.kernels.qk_norm_rope(attn.q(h), attn.norm_q.weight, attn.norm_q.eps, None, attn.num_heads)
    return x + attn.o(attention(q.to(x.dtype), k, v, attn.attn_backend).flatten(2))


def ffn(block, x, shift, scale, gate):
    """norm2 + per-frame modulate, the FFN, the gated residual."""
    f = shift.size(0)
    rows = per_frame(x, f)
    h = block.kernels.norm_modulate(rows, 1 + scale[:, None], shift[:, None], block.norm2.eps)
    return torch.addcmul(rows, per_frame(block.ffn(h.view_as(x)), f), gate[:, None]).view_as(x)


def mouse_qkv(action, x, windows, cos, sin):
    """The mouse MLP over [hidden ‖ window] and its q/k/v, per location: [S, F, heads, d] views."""
    f = windows.size(0)
    h = action.mouse_hidden(x, windows)
    for layer in action.mouse_mlp[1:]:
        h = layer(h)
    q, k, v = action.t_qkv(h).view(f, -1, 3, action.heads, h.size(-1) // action.heads).unbind(2)
    cos, sin = cos[:, None, None], sin[:, None, None]
    q = rotate_first(action.img_attn_q_norm(q), cos, sin)
    k = rotate_first(action.img_attn_k_norm(k), cos, sin)
    return q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)


def mouse_out(action, x, out):
    f = out.size(1)
    return x + action.proj_mouse(out.transpose(0, 1).reshape(1, f * out.size(0), -1))


def keyboard_qkv(action, x, windows, cos, sin):
    """Keyboard queries of every token [1, F·S, heads, d]; keys and values, one per frame [1, F, heads, d]."""
    embedded = action.keyboard_embed(windows).flatten(2)  # [1, F, 12·hidden]
    f = embedded.size(1)
    q = action.key_attn_q_norm(action.mouse_attn_q(x).view(1, f, -1, action.heads, action.rope_head_dim))
    k, v = action.keyboard_attn_kv(embedded).view(1, f, 2, action.heads, -1).unbind(2)
    q = rotate_first(q, cos[None, :, None, None], sin[None, :, None, None]).flatten(1, 2)
    k = rotate_first(action.key_attn_k_norm(k), cos[None, :, None], sin[None, :, None])
    return q, k, v


def keyboard_out(action, x, out):
    return x + action.proj_keyboard(out.flatten(2))


EAGER_PARTS = SimpleNamespace(self_qkv=self_qkv, self_out=self_out, cross=cross, ffn=ffn, mouse_qkv=mouse_qkv,
                              mouse_out=mouse_out, keyboard_qkv=keyboard_qkv, keyboard_out=keyboard_out,
                              name="eager")


class LeanCausalBlock(CausalWanBlock):
    def forward(self, x, e, inputs, segments, frame_tokens: int, cache):
        parts = self.parts
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = (self.modulation + e[0]).unbind(1)
        with record_function("self_attn"):
            q, k, v = parts.self_qkv(self, x, shift_msa, scale_msa, inputs["rope"])
            y = attend_segments(cache.self_attn, q, k, v, segments, frame_tokens, frame_tokens,
                                self.self_attn.attention_fn)
            x = parts.self_out(self, x, y, gate_msa)
        with record_function("cross_attn"):
            x = parts.cross(self, x, cache.cross_attn.k, cache.cross_attn.v)
        if self.action_model is not None:
            with record_function("action"):
                x = self.action_model(x, inputs, segments, cache.mouse, cache.keyboard)
        with record_function("ffn"):
            return parts.ffn(self, x, shift_ffn, scale_ffn, gate_ffn)


class LeanCausalWanModel(CausalWanModel):
    """The same call as CausalWanModel (checked the same way), split in two: `block_inputs` (host side: the frames'
    RoPE rows and action windows, once per block) and `velocity` (tensors only, no host reads: graph-capturable)."""

    def forward(self, x, t, visual_context, cond_concat, mouse_cond=None, keyboard_cond=None, *, cache,
                current_start=0):
        self.check_inputs(x, t, visual_context, cond_concat, mouse_cond, keyboard_cond, cache, current_start)
        f, start = self.config.num_frame_per_block, current_start // self.config.frame_seq_length
        self.init_cross_kv(visual_context, cache)
        inputs = self.block_inputs(start, f, mouse_cond, keyboard_cond)
        return self.velocity(x, t, cond_concat, inputs, cache, ((start, f),))

    @torch.no_grad()
    def init_cross_kv(self, visual_context, cache):
        """The image embedding and every layer's CLIP K/V, once per video (nothing when they are there)."""
        if all(layer.cross_attn.is_init for layer in cache.layers):
            return
        with record_function("img_embed"):
            context = self.img_emb(visual_context)
            for block, layer in zip(self.blocks, cache.layers):
                block.cross_attn.init_kv(context, layer.cross_attn)

    def rope_rows(self, start: int, frames: int, device):
        """Real cos/sin [frames·h·w, 1, head_dim/2] (fp32) of latent frames start.., built on the device from the
        model's complex table (a copy of it kept there: upstream keeps it on the CPU until the first call)."""
        (h, w), (_, ph, pw) = self.config.latent_hw, self.config.patch_size
        freqs = self.__dict__.get("_device_freqs")
        if freqs is None or freqs.device != torch.device(device):
            freqs = self._device_freqs = self.freqs.to(device)
        return rope_cos_sin(freqs, (frames, h // ph, w // pw), torch.float32, device, frame_offset=start)

    def block_inputs(self, start: int, frames: int, mouse, keyboard) -> dict:
        """Everything position-dependent of latent frames start..start+frames-1, as tensors: RoPE rows, the action
        module's RoPE rows and windows (mouse [frames, 12·2], keyboard [1, frames, 12, K] raw)."""
        a = self.config.action
        device = keyboard.device
        inputs = {"rope": self.rope_rows(start, frames, device)}
        action = next((b.action_model for b in self.blocks if b.action_model is not None), None)
        if action is None:
            return inputs
        if action.rope is None or action.rope[0].device != device:
            action.rope = action_rope_table(action.rope_head_dim, a.mouse_qk_dim_list, a.rope_theta, device)
        n = a.mouse_qk_dim_list[0]  # the channels that turn (the rest have angle 0)
        inputs["action_cos"] = action.rope[0][start:start + frames, :n].contiguous()
        inputs["action_sin"] = action.rope[1][start:start + frames, :n].contiguous()
        if a.enable_mouse:
            inputs["mouse_windows"] = block_windows(mouse, start, frames, action.stride, action.window)[0].flatten(1)
        inputs["keyboard_windows"] = block_windows(keyboard, start, frames, action.stride, action.window)
        return inputs

    def velocity(self, x, t, cond_concat, inputs: dict, cache, segments) -> torch.Tensor:
        """The flow velocity [1, 16, F, H, W] of x [1, 16, F, H, W] at per-frame timesteps t [1, F], the frames
        split into `segments` ((start_frame, frames), ...) for the cached attentions."""
        c = self.config
        with record_function("patch_embed"):
            x = self.patch_embedding(torch.cat([x, cond_concat], dim=1))
            grid = tuple(x.shape[2:])
            x = x.flatten(2).transpose(1, 2).contiguous()
        with record_function("time_embed"):  # per latent frame
            e = self.time_embedding(sinusoidal_embedding_1d(c.freq_dim, t.flatten()).type_as(x))
            e0 = self.time_projection(e).unflatten(1, (6, c.dim)).unflatten(0, t.shape)
        tokens = math.prod(grid[1:])
        for i, block in enumerate(self.blocks):
            with record_function(f"block{i:02d}"):
                x = block(x, e0, inputs, segments, tokens, cache.layers[i])
        with record_function("head"):
            shift, scale = (self.head.modulation + e.unsqueeze(1)).unbind(1)  # [F, C] each
            rows = self.kernels.norm_modulate(per_frame(x, t.size(1)), 1 + scale[:, None], shift[:, None],
                                              self.head.norm.eps)
            return self.unpatchify(self.head.head(rows).unsqueeze(0), grid)


def block_windows(actions, start: int, frames: int, stride: int, window: int) -> torch.Tensor:
    """Upstream's action windows of these frames (`action_windows`), cut from only the action rows they read:
    [1, frames, window, C]. Frame i reads rows stride·i − window .. stride·i − 1; rows below 0 read action 0."""
    lo, hi = stride * start - window, stride * (start + frames - 1)
    rows = actions[:, torch.arange(lo, hi, device=actions.device).clamp(min=0)]
    return torch.stack([rows[:, stride * i:stride * i + window] for i in range(frames)], dim=1)


class LeanCausalPipeline(CausalPipeline):
    """CausalPipeline whose block is one function of tensors, `run_block(key, tensors)`; `key` names everything the
    function decides on the host (frames, cache slots, the block's shape of work), so two blocks with one key run
    the same kernels on the same cache slots (stage 07 records one CUDA graph per key)."""

    fold_refresh = False  # stage 08

    def block_key(self, segments) -> tuple:
        """What a block's kernels depend on besides tensor values: per segment, its first cache slot, its frames,
        and whether the window is full by its end."""
        w = self.config.local_attn_size
        return tuple((start % w, frames, start + frames >= w) for start, frames in segments)

    def prepare_block(self, state) -> tuple[tuple, dict, tuple]:
        """Host side of the next block: its segments of frames, its tensors (the fresh noise drawn up front in
        upstream's order), its key. With the refresh folded (stage 08) and a block before it, the first eval covers
        the previous block's frames too: `fold_*` tensors."""
        f = self.config.num_frame_per_block
        s = state.block * f
        fold = self.fold_refresh and state.block > 0
        segments = ((s - f, f), (s, f)) if fold else ((s, f),)
        xt = state.noise[:, :, s:s + f]
        tensors = {
            "xt": xt,
            "noises": [torch.randn(xt.shape, generator=state.generator, device=self.device, dtype=self.dtype)
                       for _ in range(len(self.timesteps) - 1)],
            "cond_concat": state.cond_concat[:, :, s:s + f],
            "inputs": self.model.block_inputs(s, f, state.mouse, state.keyboard),
        }
        if fold:
            tensors["previous_x0"] = state.output[:, :, s - f:s]
            tensors["fold_cond_concat"] = state.cond_concat[:, :, s - f:s + f]
            tensors["fold_inputs"] = self.model.block_inputs(s - f, 2 * f, state.mouse, state.keyboard)
        # the refresh at the end of the body depends on fold_refresh too (block 0 of a folded video has none)
        return segments, tensors, ("fold" if fold else "block", self.fold_refresh, self.block_key(segments))

    def block_timesteps(self):
        """Per-frame timestep rows of each denoising eval and of the cache refresh (upstream's float32), built
        once: a CUDA graph keeps reading the same tensors."""
        if getattr(self, "_timestep_rows", None) is None:
            f = self.config.num_frame_per_block
            rows = [torch.ones([1, f], device=self.device, dtype=torch.int64) * t for t in self.timesteps]
            self._timestep_rows = rows, torch.ones_like(rows[0]) * self.config.context_noise
        return self._timestep_rows

    def block_body(self, segments, tensors: dict) -> torch.Tensor:
        """The block's GPU work: the denoising evals and the cache refresh, or, with the refresh folded, the previous
        block's refresh inside the first eval and no refresh at the end (the next block does it). x0 out."""
        f = self.config.num_frame_per_block
        steps, t_refresh = self.block_timesteps()
        xt, cond, inputs, own = tensors["xt"], tensors["cond_concat"], tensors["inputs"], segments[-1:]
        for k, t in enumerate(steps):
            with record_function("denoise_eval"):
                if k == 0 and len(segments) == 2:
                    v = self.model.velocity(torch.cat([tensors["previous_x0"], xt], dim=2),
                                            torch.cat([t_refresh, t], dim=1), tensors["fold_cond_concat"],
                                            tensors["fold_inputs"], self.cache, segments)[:, :, f:]
                else:
                    v = self.model.velocity(xt, t, cond, inputs, self.cache, own)
                x0 = self.flow_to_x0(v, xt, t)
            if k + 1 < len(steps):
                with record_function("add_noise"):
                    xt = self.add_noise(x0, tensors["noises"][k], steps[k + 1][0])
        if not self.fold_refresh:
            with record_function("cache_refresh"):
                self.model.velocity(x0, t_refresh, cond, inputs, self.cache, own)
        return x0

    def run_block(self, key, segments, tensors: dict) -> torch.Tensor:
        return self.block_body(segments, tensors)

    def velocity(self, xt, t, cond: dict, start_frame: int) -> torch.Tensor:
        """One eval, as CausalPipeline.velocity takes it (checked the same way), through the tensor function the
        blocks use (`eval_velocity`)."""
        f, xt = self.config.num_frame_per_block, xt.to(self.dtype)
        self.model.check_inputs(xt, t, cond["visual_context"], cond["cond_concat"], cond["mouse_cond"],
                                cond["keyboard_cond"], self.cache, start_frame * self.config.frame_seq_length)
        self.model.init_cross_kv(cond["visual_context"], self.cache)
        inputs = self.model.block_inputs(start_frame, f, cond["mouse_cond"], cond["keyboard_cond"])
        return self.eval_velocity(xt, t, cond["cond_concat"], inputs, ((start_frame, f),))

    def eval_velocity(self, xt, t, cond_concat, inputs, segments) -> torch.Tensor:
        return self.model.velocity(xt, t, cond_concat, inputs, self.cache, segments)

    @torch.no_grad()
    def next_block(self, state) -> torch.Tensor:
        if state.block >= state.num_blocks:
            raise ValueError(f"all {state.num_blocks} blocks are made; call start() for a new video")
        f = self.config.num_frame_per_block
        s = state.block * f
        with record_function("mg2_block"):
            self.model.init_cross_kv(state.visual_context, self.cache)
            segments, tensors, key = self.prepare_block(state)
            x0 = self.run_block(key, segments, tensors)
            state.output[:, :, s:s + f] = x0
        state.block += 1
        return x0


def lean_causal_model(model: CausalWanModel) -> CausalWanModel:
    """Swap a CausalWanModel's classes for the lean ones in place (parameters untouched) and return it."""
    model.__class__ = LeanCausalWanModel
    for block in model.blocks:
        block.__class__ = LeanCausalBlock
        block.self_attn.__class__ = LeanCausalSelfAttention
        block.cross_attn.__class__ = LeanImageCrossAttention
        if block.action_model is not None:
            block.action_model.__class__ = LeanActionModule
    set_parts(model, kernels=EAGER_KERNELS, parts=EAGER_PARTS)
    return model


def set_parts(model, kernels=None, parts=None):
    """The elementwise kernels (eager or Triton, stage 05) and the block pieces (eager or compiled, stage 06) every
    lean module of the model calls."""
    for m in model.modules():
        if isinstance(m, (LeanCausalWanModel, LeanCausalBlock, LeanCausalSelfAttention, LeanImageCrossAttention,
                          LeanActionModule)):
            if kernels is not None:
                m.kernels = kernels
            if parts is not None:
                m.parts = parts
    return model


def mg2_lean_numerics(pipe):
    if not isinstance(pipe, CausalPipeline):
        raise TypeError(f"mg2_lean_numerics takes a CausalPipeline; got {type(pipe).__name__}")
    lean_causal_model(pipe.model)
    pipe.__class__ = LeanCausalPipeline
    return pipe


def fold_cache_refresh(pipe):
    """Matrix-Game-2 stage 08: block b's cache-refresh eval folded into block b+1's first denoising eval.

    What changes: instead of a separate refresh eval at t = 0 over block b's x0 after its last denoising eval, block
    b+1's first eval runs over both blocks' frames (6 latent frames, per-frame timesteps 0 and the first step's):
    one forward, GEMMs of twice the rows. In every cached attention the two blocks are two segments, one after the
    other: block b's frames write their clean K/V and attend to the window ending at b (exactly the refresh's
    attention), then block b+1's frames write theirs and attend to the window ending at b+1, which holds b's clean
    K/V as the refresh just wrote them in this layer. Exact up to reordering (GEMM rows batched differently); one
    sequential eval fewer per block. The last block's refresh stays pending until a next block asks for it (its K/V
    are only read by later blocks). Apply between videos."""
    if not isinstance(pipe, LeanCausalPipeline):
        raise TypeError("fold_cache_refresh needs the lean Matrix-Game-2 pipeline: apply 03_dtype_hygiene first")
    pipe.fold_refresh = True
    return pipe

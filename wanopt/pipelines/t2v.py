"""Text -> latents -> frames: the official single-GPU T2V path (`wan/text2video.py::WanT2V.generate`).

What the official path does, and this one by default:
  - T5 (umT5-XXL encoder) lives on the CPU; it is moved to the GPU to encode prompt and negative prompt (two
    calls) and, with offload, moved back;
  - each step runs two sequential DiT forwards (cond, then uncond) and mixes them v_u + g·(v_c − v_u);
  - A14B: the high-noise expert for t >= 875 (guide 4.0), the low-noise one below (guide 3.0), compared on the
    int64 timestep with `.item()` (a host sync per step);
  - offload (the README's single-GPU recipe): one expert resident; synchronous pageable `.to()` moves at step 0
    and at the switch; after the loop both experts go to the CPU before the VAE decode;
  - flow-matching UniPC (or flow Euler), then the Wan2.1 VAE decode in float32, clamped to [-1, 1].
The stages in wanopt.stages change these switches (`offload`, `batch_cfg`, `dit_contexts`) or the models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import record_function
from tqdm import tqdm

from .. import weights
from ..configs import T2VConfig, get_config, latent_shape
from .schedulers import make_scheduler


class ByteTokenizer:
    """Stand-in for google/umt5-xxl when no tokenizer files are given: UTF-8 bytes + 3 (ByT5-style ids, which
    any umT5 vocabulary holds), an EOS of 1, padded with 0 to max_length, truncated like upstream's tokenizer.
    Only random-weight runs use it; real checkpoints come with their tokenizer folder."""

    pad_token_id, eos_token_id = 0, 1

    def __call__(self, texts, max_length: int):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tok = [b + 3 for b in " ".join(text.split()).encode("utf-8")][: max_length - 1] + [self.eos_token_id]
            ids[i, : len(tok)] = torch.tensor(tok)
            mask[i, : len(tok)] = 1
        return ids, mask


class HFTokenizer:
    """The umT5 tokenizer from a local folder (upstream `google/umt5-xxl/`, diffusers `tokenizer/`)."""

    def __init__(self, path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))

    def __call__(self, texts, max_length: int):
        out = self.tok([" ".join(t.split()) for t in texts], padding="max_length", truncation=True,
                       max_length=max_length, add_special_tokens=True, return_attention_mask=True,
                       return_tensors="pt")
        return out.input_ids, out.attention_mask


@dataclass
class CheckpointLayout:
    """Where each component of a local checkpoint lives (None: random weights)."""

    experts: dict[str, Path | None]
    t5: Path | None = None
    tokenizer: Path | None = None
    vae: Path | None = None

    @classmethod
    def find(cls, config: T2VConfig, root) -> "CheckpointLayout":
        """Official layout (high_noise_model/, low_noise_model/, models_t5_*.pth, Wan2.1_VAE.pth, google/umt5-xxl/)
        or diffusers layout (transformer/, transformer_2/, text_encoder/, vae/, tokenizer/)."""
        if root is None:
            names = ["high_noise", "low_noise"] if config.num_experts == 2 else ["model"]
            return cls({n: None for n in names})
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"checkpoint folder {root} does not exist")
        diffusers = (root / "transformer").is_dir()
        if config.num_experts == 2:
            experts = ({"high_noise": root / "transformer", "low_noise": root / "transformer_2"} if diffusers else
                       {"high_noise": root / "high_noise_model", "low_noise": root / "low_noise_model"})
        else:
            experts = {"model": root / "transformer" if diffusers else root}
        for name, p in experts.items():
            if not p.exists():
                raise FileNotFoundError(f"{config.name} needs the {name} expert at {p}; found only "
                                        f"{sorted(x.name for x in root.iterdir())}")
        if diffusers:
            return cls(experts, _maybe(root / "text_encoder"), _maybe(root / "tokenizer"), _maybe(root / "vae"))
        t5 = next(iter(sorted(root.glob("models_t5_*.pth"))), None)
        return cls(experts, t5, _maybe(root / "google" / "umt5-xxl"), _maybe(root / "Wan2.1_VAE.pth"))


def _maybe(p: Path) -> Path | None:
    return p if p.exists() else None


@dataclass
class DenoiseState:
    """Everything one denoising loop carries from step to step."""

    latents: torch.Tensor  # [1, C, F, H, W] float32
    context: torch.Tensor  # [1, len, text_dim]
    context_null: torch.Tensor
    scheduler: object
    timesteps: torch.Tensor
    step_index: int = 0
    expert_log: list = field(default_factory=list)
    velocity: torch.Tensor | None = None


class WanT2V:
    """The official T2V pipeline. `WanT2V("wan2.2-t2v-a14b", device="cuda")` builds it with random weights at
    real size; `checkpoint_dir=` loads a local checkpoint in the official or the diffusers layout."""

    def __init__(self, config: T2VConfig | str, *, checkpoint_dir=None, device=None, dtype=torch.bfloat16,
                 offload: bool = True, t5_cpu: bool = False, seed: int = 0, text_encoder: bool = True,
                 vae: bool = True):
        self.config = get_config(config) if isinstance(config, str) else config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype, self.offload, self.t5_cpu = dtype, offload, t5_cpu
        self.batch_cfg = False  # stage `batch_cfg` turns this on
        self.release_t5_after_encode = False  # stage `no_offload` turns this on
        self.dit_contexts: list = []  # context-manager factories entered around every DiT call (stages add)
        layout = CheckpointLayout.find(self.config, checkpoint_dir)
        self.layout = layout
        home = torch.device("cpu") if offload else self.device
        # Random weights are drawn where they will run (fast on a GPU), then parked where upstream keeps them.
        self.experts = {}
        for i, (name, path) in enumerate(layout.experts.items()):
            model = weights.build_wan(self.config.dit, device=home if path is not None else self.device,
                                      dtype=dtype, seed=seed + i, checkpoint=path)
            self.experts[name] = model.to(home)
        self.tokenizer = HFTokenizer(layout.tokenizer) if layout.tokenizer is not None else ByteTokenizer()
        self.text_encoder = None
        if text_encoder:  # upstream builds T5 on the CPU in bf16
            t5_device = torch.device("cpu") if (offload or t5_cpu) and layout.t5 is not None else self.device
            self.text_encoder = weights.build_t5(self.config.t5, device=t5_device, dtype=torch.bfloat16,
                                                 seed=seed + 100, checkpoint=layout.t5)
            if offload or t5_cpu:
                self.text_encoder.to("cpu")
        self.vae = weights.build_vae(self.config.vae, device=self.device, dtype=torch.float32, seed=seed + 200,
                                     checkpoint=layout.vae) if vae else None

    # -- text ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Two T5 calls (prompt, then negative prompt), each trimmed to its real token count: [1, len, text_dim]."""
        if self.text_encoder is None:
            raise RuntimeError("this pipeline was built with text_encoder=False: pass contexts to prepare()")
        negative_prompt = negative_prompt or self.config.sample_neg_prompt
        with record_function("text_encode"):
            t5_device = torch.device("cpu") if self.t5_cpu else self.device
            self.text_encoder.to(t5_device)
            out = []
            for text in (prompt, negative_prompt):
                ids, mask = self.tokenizer([text], max_length=self.config.dit.text_len)
                ids, mask = ids.to(t5_device), mask.to(t5_device)
                hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                out.append(hidden[:, : int(mask.sum())].to(self.device))
            if self.offload and not self.t5_cpu:
                self.text_encoder.to("cpu")
        if self.release_t5_after_encode:
            self.release_text_encoder()
        return out[0], out[1]

    def release_text_encoder(self):
        """Drop T5 once the prompts are encoded (stage `no_offload`): 11 GB of GPU memory back."""
        self.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- denoising -----------------------------------------------------------------------------------------------

    def prepare(self, context: torch.Tensor, context_null: torch.Tensor, *, size=None, frame_num=None,
                sampling_steps=None, shift=None, seed: int = 0, solver: str = "unipc") -> DenoiseState:
        c = self.config
        size = tuple(size or c.sizes[0])
        shape = latent_shape(c, size, frame_num or c.frame_num)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        noise = torch.randn(1, *shape, dtype=torch.float32, device=self.device, generator=gen)
        sched = make_scheduler(solver, sampling_steps or c.sample_steps, c.sample_shift if shift is None else shift,
                               device=self.device)
        return DenoiseState(noise, context, context_null, sched, sched.timesteps)

    def expert_for(self, t: torch.Tensor) -> str:
        """The expert for timestep t (one `.item()`: a host sync per step, as upstream)."""
        if self.config.num_experts == 1:
            return "model"
        return "high_noise" if t.item() >= self.config.boundary * self.config.num_train_timesteps else "low_noise"

    def guide_scale_for(self, t: torch.Tensor) -> float:
        low, high = self.config.guide_scale
        if self.config.num_experts == 1:
            return low
        return high if t.item() >= self.config.boundary * self.config.num_train_timesteps else low

    def prepare_expert(self, name: str) -> torch.nn.Module:
        """Upstream `_prepare_model_for_timestep`: with offload, the other expert leaves the GPU and this one comes
        in, synchronously, from pageable memory."""
        model = self.experts[name]
        if self.offload and self.device.type == "cuda":
            others = [m for n, m in self.experts.items() if n != name]
            if any(_device_of(m).type == "cuda" for m in others) or _device_of(model).type == "cpu":
                with record_function("expert_switch"):
                    for m in others:
                        if _device_of(m).type == "cuda":
                            m.to("cpu")
                    if _device_of(model).type == "cpu":
                        model.to(self.device)
        elif _device_of(model) != self.device:
            model.to(self.device)
        return model

    def dit(self, model, x, t, context):
        with contextlib.ExitStack() as stack:
            for make_context in self.dit_contexts:
                stack.enter_context(make_context())
            return model(x, t, context)

    @torch.no_grad()
    def denoise_step(self, state: DenoiseState) -> DenoiseState:
        """One step: pick the expert (and move weights, with offload), two CFG evals, one scheduler step."""
        t = state.timesteps[state.step_index]
        with record_function("denoise_step"):
            name = self.expert_for(t)
            model = self.prepare_expert(name)
            g = self.guide_scale_for(t)
            x, ts = state.latents, t.reshape(1)
            if self.batch_cfg:
                with record_function("cfg_batched"):
                    ctx = _pad_cat([state.context, state.context_null], self.config.dit.text_len)
                    v_c, v_u = self.dit(model, torch.cat([x, x]), ts.expand(2), ctx).chunk(2)
            else:
                with record_function("cfg_cond"):
                    v_c = self.dit(model, x, ts, state.context)
                with record_function("cfg_uncond"):
                    v_u = self.dit(model, x, ts, state.context_null)
            with record_function("scheduler_step"):
                v = v_u + g * (v_c - v_u)
                state.latents = state.scheduler.step(v, t, state.latents, return_dict=False)[0]
        state.velocity = v  # the guided velocity of this step (what the stages are compared on)
        state.expert_log.append(name)
        state.step_index += 1
        return state

    def offload_all(self):
        """After the loop, with offload: both experts back to the CPU and the cache emptied before the decode."""
        if self.offload and self.device.type == "cuda":
            for m in self.experts.values():
                m.to("cpu")
            torch.cuda.empty_cache()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Wan2.1 VAE decode in float32: de-normalise (z·std + mean), decode frame by frame, clamp to [-1, 1].
        Returns [B, 3, frames, H, W]."""
        if self.vae is None:
            raise RuntimeError("this pipeline was built with vae=False")
        with record_function("vae_decode"):
            cfg = self.vae.config
            mean = torch.tensor(cfg.latents_mean, device=latents.device).view(1, -1, 1, 1, 1)
            std = torch.tensor(cfg.latents_std, device=latents.device).view(1, -1, 1, 1, 1)
            z = (latents.float() * std + mean).to(self.vae.dtype)
            return self.vae.decode(z, return_dict=False)[0].float().clamp_(-1, 1)

    @torch.no_grad()
    def generate(self, prompt: str, negative_prompt: str = "", *, size=None, frame_num=None, sampling_steps=None,
                 shift=None, seed: int = 0, solver: str = "unipc", progress: bool = True) -> torch.Tensor:
        """Prompt -> video [3, frames, H, W] in [-1, 1]."""
        context, context_null = self.encode_prompt(prompt, negative_prompt)
        state = self.prepare(context, context_null, size=size, frame_num=frame_num, sampling_steps=sampling_steps,
                             shift=shift, seed=seed, solver=solver)
        for _ in tqdm(range(len(state.timesteps)), desc="denoise", disable=not progress):
            self.denoise_step(state)
        self.offload_all()
        return self.decode(state.latents)[0]


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pad_cat(contexts, text_len: int) -> torch.Tensor:
    """Zero-pad [1, len_i, D] contexts to text_len and stack them (what the DiT would pad each to anyway)."""
    out = []
    for c in contexts:
        out.append(torch.cat([c, c.new_zeros(c.size(0), text_len - c.size(1), c.size(2))], 1))
    return torch.cat(out)

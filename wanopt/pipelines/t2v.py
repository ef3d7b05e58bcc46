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


COMPONENTS = ("dit", "t5", "tokenizer", "vae")  # what a T2V checkpoint folder holds, in the order reported


@dataclass
class CheckpointLayout:
    """Where each component of a local checkpoint lives (None: not found there), and where each was looked for."""

    experts: dict[str, Path | None]
    t5: Path | None = None
    tokenizer: Path | None = None
    vae: Path | None = None
    root: Path | None = None
    looked: dict[str, list] = field(default_factory=dict)  # component label -> the paths that were checked

    @classmethod
    def find(cls, config: T2VConfig, root) -> "CheckpointLayout":
        """Official layout (high_noise_model/, low_noise_model/, models_t5_*.pth, Wan2.1_VAE.pth, google/umt5-xxl/)
        or diffusers layout (transformer/, transformer_2/, text_encoder/, vae/, tokenizer/). Absent components are
        None here; `require` turns the ones a pipeline needs into one error."""
        names = ["high_noise", "low_noise"] if config.num_experts == 2 else ["model"]
        if root is None:
            return cls({n: None for n in names})
        if not str(root).strip() or not Path(root).is_dir():  # "" would silently mean the current directory
            raise FileNotFoundError(f"checkpoint folder {str(root)!r} does not exist; pass the folder that holds the "
                                    f"model (official or diffusers layout), or checkpoint_dir=None for random weights")
        root = Path(root)
        diffusers = (root / "transformer").is_dir()
        if config.num_experts == 2:
            dirs = ({"high_noise": root / "transformer", "low_noise": root / "transformer_2"} if diffusers else
                    {"high_noise": root / "high_noise_model", "low_noise": root / "low_noise_model"})
        else:
            dirs = {"model": root / "transformer" if diffusers else root}
        looked = {_expert_label(n, len(dirs)): [d / weights.OFFICIAL_WEIGHTS, d / weights.OFFICIAL_INDEX]
                  for n, d in dirs.items()}
        experts = {n: d if _holds_safetensors(d) else None for n, d in dirs.items()}
        if diffusers:
            t5, tok, vae = root / "text_encoder", root / "tokenizer", root / "vae"
            looked.update(t5=[t5 / "config.json"], tokenizer=[tok], vae=[vae / "config.json"])
            return cls(experts, _if(t5, (t5 / "config.json").exists()), _if(tok, _nonempty_dir(tok)),
                       _if(vae, (vae / "config.json").exists()), root, looked)
        t5 = next(iter(sorted(root.glob("models_t5_*.pth"))), None)
        tok, vae = root / "google" / "umt5-xxl", root / "Wan2.1_VAE.pth"
        looked.update(t5=[root / "models_t5_umt5-xxl-enc-bf16.pth"], tokenizer=[tok], vae=[vae])
        return cls(experts, t5, _if(tok, _nonempty_dir(tok)), _if(vae, vae.is_file()), root, looked)

    def missing(self, needed) -> dict[str, list]:
        """For each needed component (names from COMPONENTS) that is absent: where it was looked for."""
        found = {_expert_label(n, len(self.experts)): p for n, p in self.experts.items()} if "dit" in needed else {}
        found.update({name: getattr(self, name) for name in ("t5", "tokenizer", "vae") if name in needed})
        return {label: self.looked.get(label, []) for label, p in found.items() if p is None}

    def require(self, needed) -> "CheckpointLayout":
        """Every needed component present, or one CheckpointError listing each absent one and where it was looked."""
        absent = self.missing(needed)
        if absent:
            kinds = [c for c in COMPONENTS if any(label.split()[0] == c for label in absent)]
            raise weights.CheckpointError.missing_components(self.root, absent, hint=(
                f"Put them there (official layout: high_noise_model/, low_noise_model/, models_t5_umt5-xxl-enc-"
                f"bf16.pth, Wan2.1_VAE.pth, google/umt5-xxl/; diffusers layout: transformer/, transformer_2/, "
                f"text_encoder/, tokenizer/, vae/), or ask for seeded random weights explicitly with "
                f"random_components={tuple(kinds)!r} (profiling only: the video is noise), or build without them "
                f"(text_encoder=False, vae=False)."))
        return self


def _expert_label(name: str, count: int) -> str:
    return "dit" if count == 1 else f"dit ({name} expert)"


def _holds_safetensors(p: Path) -> bool:
    return p.is_dir() and (any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json")))


def _nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _if(p: Path, present: bool) -> Path | None:
    return p if present else None


def resolve_random_components(requested, checkpoint_dir, needed) -> tuple[str, ...]:
    """The components that get seeded random weights: all of them without a checkpoint folder (the documented
    default for profiling), else exactly those asked for in `random_components` (names from COMPONENTS, or "all")."""
    if requested is None:
        asked = set() if checkpoint_dir is not None else set(COMPONENTS)
    else:
        asked = set(COMPONENTS) if requested == "all" else {requested} if isinstance(requested, str) else set(requested)
        unknown = sorted(asked - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) {unknown} in random_components; choose from {COMPONENTS} or 'all'")
        if checkpoint_dir is None and not set(needed) <= asked:
            raise ValueError(f"random_components={tuple(sorted(asked))} without checkpoint_dir: there is nothing to "
                             f"load {sorted(set(needed) - asked)} from. Pass checkpoint_dir=, or leave "
                             f"random_components out for an all-random pipeline.")
    return tuple(c for c in COMPONENTS if c in needed and c in asked)


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
    real size; `checkpoint_dir=` loads a local checkpoint in the official or the diffusers layout.

    Weights, strictly: with checkpoint_dir every component the pipeline builds (the DiT experts; T5 and its tokenizer
    unless text_encoder=False; the VAE unless vae=False) must load from that folder, or the constructor raises one
    wanopt.weights.CheckpointError that lists every missing component and the paths where it was looked for.
    `random_components=("t5", "tokenizer", "vae")` (any of "dit", "t5", "tokenizer", "vae", or "all") gives those
    seeded random weights instead (the tokenizer: a byte-level stand-in), for profiling with a partial download.
    Without checkpoint_dir every component is random at real size, the default for profiling. Whenever a component
    is random the console says so once (a RandomWeightsWarning) and `pipe.random_components` names them (a tuple,
    empty when everything loaded), so a capture can record it in its manifest.
    """

    def __init__(self, config: T2VConfig | str, *, checkpoint_dir=None, device=None, dtype=torch.bfloat16,
                 offload: bool = True, t5_cpu: bool = False, seed: int = 0, text_encoder: bool = True,
                 vae: bool = True, random_components=None):
        self.config = get_config(config) if isinstance(config, str) else config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype, self.offload, self.t5_cpu = dtype, offload, t5_cpu
        self.batch_cfg = False  # stage `batch_cfg` turns this on
        self.release_t5_after_encode = False  # stage `no_offload` turns this on
        self.dit_contexts: list = []  # context-manager factories entered around every DiT call (stages add)
        needed = ("dit",) + (("t5", "tokenizer") if text_encoder else ()) + (("vae",) if vae else ())
        random = resolve_random_components(random_components, checkpoint_dir, needed)
        layout = CheckpointLayout.find(self.config, checkpoint_dir)
        layout.require([c for c in needed if c not in random])
        self.layout, self.random_components = layout, random
        self._announce_random(checkpoint_dir)

        def source(component, path):
            return None if component in random else path

        home = torch.device("cpu") if offload else self.device
        # Random weights are drawn where they will run (fast on a GPU), then parked where upstream keeps them.
        self.experts = {}
        for i, (name, path) in enumerate(layout.experts.items()):
            path = source("dit", path)
            model = weights.build_wan(self.config.dit, device=home if path is not None else self.device,
                                      dtype=dtype, seed=seed + i, checkpoint=path)
            self.experts[name] = model.to(home)
        tokenizer = source("tokenizer", layout.tokenizer)
        self.tokenizer = HFTokenizer(tokenizer) if tokenizer is not None else ByteTokenizer()
        self.text_encoder = None
        if text_encoder:  # upstream builds T5 on the CPU in bf16
            t5 = source("t5", layout.t5)
            t5_device = torch.device("cpu") if (offload or t5_cpu) and t5 is not None else self.device
            self.text_encoder = weights.build_t5(self.config.t5, device=t5_device, dtype=torch.bfloat16,
                                                 seed=seed + 100, checkpoint=t5)
            if offload or t5_cpu:
                self.text_encoder.to("cpu")
        self.vae = weights.build_vae(self.config.vae, device=self.device, dtype=torch.float32, seed=seed + 200,
                                     checkpoint=source("vae", layout.vae)) if vae else None

    def _announce_random(self, checkpoint_dir):
        """One console line when any component is random: output from random weights is noise."""
        if not self.random_components:
            return
        names = [c + (" (byte-level stand-in)" if c == "tokenizer" else "") for c in self.random_components]
        reason = ("no checkpoint_dir given; pass checkpoint_dir= for real weights" if checkpoint_dir is None else
                  f"asked for with random_components; the rest loaded from {checkpoint_dir}")
        weights.warn_random(f"WanT2V({self.config.name!r})", names, reason, stacklevel=3)  # the caller of __init__

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
                    ctx = pad_text([state.context, state.context_null], self.config.dit.text_len)
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


def pad_text(contexts, text_len: int) -> torch.Tensor:
    """Zero-pad [1, len_i, D] contexts to text_len and stack them (what the DiT would pad each to anyway)."""
    out = []
    for c in contexts:
        out.append(torch.cat([c, c.new_zeros(c.size(0), text_len - c.size(1), c.size(2))], 1))
    return torch.cat(out)

"""Weights: safetensors checkpoints in the official, diffusers and Matrix-Game-2 layouts; random weights at scale.

Loading is strict: one error lists every missing, unexpected and mis-shaped key. Tensors are copied one at a
time from the (memory-mapped) files into parameters that already live on the target device in the target dtype,
so a 14B expert never exists as an fp32 copy on the CPU.

Every model builder lives here (build_wan, build_causal, build_t5, build_vae). The import goes one way: this
module imports wanopt.models, and nothing in wanopt.models imports it.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open

from .configs import CausalWanConfig, T5Config, VAEConfig, WanConfig, get_mg2_config
from .models.causal import CausalWanModel
from .models.layers import apply_compute_dtype
from .models.wan import WanModel

OFFICIAL_WEIGHTS = "diffusion_pytorch_model.safetensors"
OFFICIAL_INDEX = "diffusion_pytorch_model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, said in one error: the keys that do not fit the model (missing, unexpected,
    mis-shaped), the components a checkpoint folder lacks (`missing_components`), or a file that is not valid
    safetensors (`unreadable`)."""

    def __init__(self, path, missing=(), unexpected=(), mismatched=(), hint="", *, message: str | None = None):
        self.path = path
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        self.components: dict[str, list[Path]] = {}  # missing component -> where it was looked for
        msg = self._key_listing() if message is None else message
        super().__init__(msg + (f"\n  {hint}" if hint else ""))

    def _key_listing(self) -> str:
        def listing(title, items, fmt=str):
            if not items:
                return ""
            shown = "\n".join(f"    {fmt(i)}" for i in items[:12])
            more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
            return f"\n  {title} ({len(items)}):\n{shown}{more}"

        return (f"checkpoint {self.path} does not match the model"
                + listing("missing keys (in the model, not in the checkpoint)", self.missing)
                + listing("unexpected keys (in the checkpoint, not in the model)", self.unexpected)
                + listing("mis-shaped keys (name: checkpoint shape vs model shape)", self.mismatched,
                          lambda m: f"{m[0]}: {list(m[1])} vs {list(m[2])}"))

    @classmethod
    def missing_components(cls, root, looked: dict, hint: str = "") -> "CheckpointError":
        """Components a checkpoint folder lacks, each with the paths where it was looked for."""
        lines = [f"checkpoint folder {root} lacks {len(looked)} component(s) the pipeline needs:"]
        lines += [f"    {name}: looked for {' or '.join(str(p) for p in paths)}" for name, paths in looked.items()]
        err = cls(root, message="\n".join(lines), hint=hint)
        err.components = {name: list(paths) for name, paths in looked.items()}
        return err

    @classmethod
    def unreadable(cls, path, exc: Exception) -> "CheckpointError":
        """A file that safetensors cannot parse: its path, the parser's words, the likely cause and the fix."""
        return cls(path, message=f"{path} is not a valid safetensors file ({exc}). A truncated or interrupted "
                                 f"download is the usual cause: compare its size with the source's listing and "
                                 f"download it again.")


class RandomWeightsWarning(UserWarning):
    """A model or pipeline built with seeded random weights for some component: its output is noise."""


def warn_random(owner: str, components, reason: str, stacklevel: int = 2) -> None:
    """One console line naming the random components (output from random weights is noise, so say so). stacklevel
    counts from the caller, as in warnings.warn: point it at the user's line that built the pipeline."""
    warnings.warn(f"{owner}: random weights for {', '.join(components)} ({reason}); the output is noise, fine for "
                  f"profiling only.", RandomWeightsWarning, stacklevel=stacklevel + 1)


# ---------------------------------------------------------------------------------------------------------------
# Key maps

# Official WanModel key -> diffusers WanTransformer3DModel key (diffusers' convert_wan_to_diffusers.py).
_WAN_TO_DIFFUSERS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
    (r"^blocks\.(\d+)\.self_attn\.([qkv])\.", r"blocks.\1.attn1.to_\2."),
    (r"^blocks\.(\d+)\.self_attn\.o\.", r"blocks.\1.attn1.to_out.0."),
    (r"^blocks\.(\d+)\.self_attn\.norm_([qk])\.", r"blocks.\1.attn1.norm_\2."),
    (r"^blocks\.(\d+)\.cross_attn\.([qkv])\.", r"blocks.\1.attn2.to_\2."),
    (r"^blocks\.(\d+)\.cross_attn\.o\.", r"blocks.\1.attn2.to_out.0."),
    (r"^blocks\.(\d+)\.cross_attn\.norm_([qk])\.", r"blocks.\1.attn2.norm_\2."),
    (r"^blocks\.(\d+)\.norm3\.", r"blocks.\1.norm2."),  # the cross-attention LN: names swapped in diffusers
    (r"^blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"^blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
]


def wan_key_to_diffusers(key: str) -> str:
    for pattern, repl in _WAN_TO_DIFFUSERS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key  # patch_embedding.* is the same in both


def wan_state_dict_to_diffusers(state_dict: dict) -> dict:
    return {wan_key_to_diffusers(k): v for k, v in state_dict.items()}


# Official umT5 encoder (wan/modules/t5.py) key -> transformers UMT5EncoderModel key.
_T5_TO_HF = [
    (r"^token_embedding\.weight$", "shared.weight"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
]


def t5_key_to_hf(key: str) -> str:
    for pattern, repl in _T5_TO_HF:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def _checkpoint_key_map(model: nn.Module, ckpt_keys) -> dict[str, str]:
    """checkpoint key -> model key, for whichever layout the checkpoint is in."""
    keys = list(ckpt_keys)
    # Matrix-Game-2 files are saved from a wrapper (`model.`); ComfyUI-style files carry `model.diffusion_model.`.
    for prefix in ("model.diffusion_model.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            keys = [k[len(prefix):] for k in keys]
            strip = len(prefix)
            break
    else:
        strip = 0
    mapping = {orig: k for orig, k in zip(ckpt_keys, keys)}
    if isinstance(model, WanModel) and any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k
                                           for k in keys):
        from_diffusers = {wan_key_to_diffusers(k): k for k in model.state_dict()}
        mapping = {orig: from_diffusers.get(orig[strip:], orig[strip:]) for orig in ckpt_keys}
    return mapping


# ---------------------------------------------------------------------------------------------------------------
# Files


def checkpoint_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, an official or diffusers folder, or a sharded index."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"checkpoint {p} does not exist. Pass a .safetensors file, or a folder holding "
            f"{OFFICIAL_WEIGHTS} or its shards with {OFFICIAL_INDEX} (official: the model folder, or "
            f"high_noise_model/ / low_noise_model/ for A14B; diffusers: transformer/ or transformer_2/).")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"{p} is not a .safetensors file; the DiT checkpoints of Wan and Matrix-Game-2 are "
                             f"safetensors (convert a .pth with safetensors.torch.save_file first)")
        return [p]
    indexes = sorted(p.glob("*.safetensors.index.json"))
    if indexes:
        index = indexes[0]
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(index, message=f"{index} is not a valid shard index (JSON with a 'weight_map': "
                                                 f"{exc!r}); download it again") from exc
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (p / f).exists()]
        if missing:
            raise FileNotFoundError(f"{index.name} in {p} names {len(files)} shard(s) but {len(missing)} are missing: "
                                    f"{', '.join(missing)}. Download the missing shard(s) into {p}.")
        return [p / f for f in files]
    single = p / OFFICIAL_WEIGHTS
    if single.exists():
        return [single]
    files = sorted(p.glob("*.safetensors"))
    if not files:
        sub = [d.name for d in p.iterdir() if d.is_dir()]
        raise FileNotFoundError(f"no .safetensors file in {p}" + (f" (sub-folders: {', '.join(sub)}; A14B experts "
                                f"live in high_noise_model/ and low_noise_model/, or transformer/ and "
                                f"transformer_2/ in the diffusers layout)" if sub else ""))
    return files


def open_safetensors(path: Path):
    """safe_open, with a parse failure turned into a CheckpointError that names the file (safetensors' own message,
    e.g. "header too large", does not)."""
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as exc:
        raise CheckpointError.unreadable(path, exc) from exc


def _read_header(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    out = {}
    for f in files:
        with open_safetensors(f) as sf:
            try:
                for k in sf.keys():
                    out[k] = (f, tuple(sf.get_slice(k).get_shape()))
            except SafetensorError as exc:
                raise CheckpointError.unreadable(f, exc) from exc
    return out


def _size_hint(model: nn.Module, header: dict, mapping: dict) -> str:
    """When shapes disagree, say which size the checkpoint is and which the config is."""
    inv = {v: k for k, v in mapping.items()}
    pe = inv.get("patch_embedding.weight")
    if pe is None or pe not in header:
        return ""
    ckpt_dim = header[pe][1][0]
    ckpt_layers = 1 + max((int(m.group(1)) for k in mapping.values() if (m := re.match(r"blocks\.(\d+)\.", k))),
                          default=-1)
    cfg = getattr(model, "config", None)
    if cfg is None or (ckpt_dim == cfg.dim and ckpt_layers == cfg.num_layers):
        return ""
    return (f"The checkpoint is a model with dim={ckpt_dim} and {ckpt_layers} layers; the config has dim={cfg.dim} "
            f"and {cfg.num_layers} layers. Build the model from the config that matches the checkpoint.")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors checkpoint (file or folder, official or diffusers layout) into `model`, strictly.

    Tensors are cast to each parameter's dtype and copied to its device as they are read.
    """
    files = checkpoint_files(path)
    header = _read_header(files)
    mapping = _checkpoint_key_map(model, header)
    params = model.state_dict()
    mapped = set(mapping.values())
    missing = sorted(k for k in params if k not in mapped)
    unexpected = sorted(orig for orig, k in mapping.items() if k not in params)
    mismatched = sorted((k, header[orig][1], tuple(params[k].shape)) for orig, k in mapping.items()
                        if k in params and header[orig][1] != tuple(params[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(path, missing, unexpected, mismatched, _size_hint(model, header, mapping))
    by_file: dict[Path, list[str]] = {}
    for orig in mapping:
        by_file.setdefault(header[orig][0], []).append(orig)
    with torch.no_grad():
        for f, keys in by_file.items():
            with open_safetensors(f) as sf:
                for orig in keys:
                    try:
                        tensor = sf.get_tensor(orig)
                    except SafetensorError as exc:
                        raise CheckpointError.unreadable(f, exc) from exc
                    params[mapping[orig]].copy_(tensor)
    return model


def save_checkpoint(model: nn.Module, folder: str | Path, max_shard_size: int | str = "10GB") -> Path:
    """Save in the official layout: diffusion_pytorch_model.safetensors, or shards plus the index JSON, and a
    config.json with upstream's field names."""
    from huggingface_hub import save_torch_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_torch_state_dict(state, folder, filename_pattern="diffusion_pytorch_model{suffix}.safetensors",
                          max_shard_size=max_shard_size)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
        (folder / "config.json").write_text(json.dumps({"_class_name": type(model).__name__, **fields}, indent=2,
                                                       default=str))
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Random weights at real scale


@torch.no_grad()
def init_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights, drawn in place on the parameters' device and dtype.

    Linear/conv weights ~ N(0, 1/fan_in) (activations keep their scale through 40 blocks); norm weights
    1 + 0.1·N(0,1) and biases 0.02·N(0,1), all non-trivial so that a wrong key map cannot hide behind ones
    and zeros; modulation tables N(0,1)/sqrt(dim) as upstream.
    """
    gen = {}

    def g(t):
        if t.device not in gen:
            gen[t.device] = torch.Generator(device=t.device).manual_seed(seed)
        return gen[t.device]

    done = set()
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in done:
                continue
            done.add(id(p))
            is_norm = isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(m).__name__
            if is_norm:
                p.normal_(1.0 if name == "weight" else 0.0, 0.1, generator=g(p))
            elif isinstance(m, nn.Embedding):
                p.normal_(0.0, 1.0, generator=g(p))
            elif p.dim() >= 2 and name == "weight":
                p.normal_(0.0, p[0].numel() ** -0.5, generator=g(p))
            elif p.dim() == 1:
                p.normal_(0.0, 0.02, generator=g(p))
            else:  # modulation / scale-shift tables [1, n, dim]
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=g(p))
    return module


def _materialize(build, device, dtype) -> nn.Module:
    """Build a module on the meta device and allocate it directly on `device` in `dtype` (no CPU fp32 copy)."""
    with torch.device("meta"):
        model = build()
    model = model.to(dtype=dtype).to_empty(device=device)
    return model


def build_wan(config: WanConfig, device="cpu", dtype=torch.bfloat16, seed: int = 0, checkpoint=None, *,
              compute_dtype: torch.dtype | None = torch.bfloat16) -> WanModel:
    """A WanModel on `device` with `dtype` parameters: loaded from `checkpoint`, else seeded random weights at real
    size.

    compute_dtype is the precision the model computes in, independently of the parameter dtype, because the model
    emulates upstream's bf16 autocast (models/layers.py): torch.bfloat16 (default) runs the linears, the patch conv
    and the attention inputs in bf16 with upstream's fp32 islands, as the official pipeline does; torch.float32
    (with dtype=torch.float32) is a true fp32 model, the setting for a comparison against another fp32
    implementation; None computes each op in its input's dtype. `model.float()` alone does not change it.
    """
    return _build(lambda: WanModel(config), device, dtype, seed, checkpoint, compute_dtype)


def build_causal(config: CausalWanConfig | str, device="cpu", dtype=torch.bfloat16, seed: int = 0,
                 checkpoint=None, *, compute_dtype: torch.dtype | None = torch.bfloat16) -> CausalWanModel:
    """A CausalWanModel on `device` in `dtype`: from a Matrix-Game-2 safetensors file (`model.` prefix optional,
    fp32 on disk cast on load, strict), else seeded random weights at real size drawn on the device.

    The model has no autocast (upstream runs it all in `dtype`); compute_dtype is what the attention inputs are cast
    to when they are not half already (upstream's flash_attention() casts to bf16). For an fp32 comparison pass
    dtype=torch.float32, compute_dtype=torch.float32 (or None).
    """
    config = get_mg2_config(config) if isinstance(config, str) else config
    return _build(lambda: CausalWanModel(config), device, dtype, seed, checkpoint, compute_dtype)


def _build(make, device, dtype, seed, checkpoint, compute_dtype):
    """Materialize, then load the checkpoint (strict) or draw random weights, then set the compute dtype."""
    _check_given(checkpoint)
    model = _materialize(make, device, dtype)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    else:
        init_random_(model, seed)
    apply_compute_dtype(model, compute_dtype)
    model.__dict__.pop("_precision_pending", None)  # dtype and compute_dtype were chosen here, explicitly
    return model.eval().requires_grad_(False)


def _check_given(checkpoint):
    """An empty path would silently mean the current directory: refuse it."""
    if checkpoint is not None and not str(checkpoint).strip():
        raise ValueError("checkpoint is an empty path; pass the checkpoint's file or folder, or None for random "
                         "weights")


def build_t5(config: T5Config, device="cpu", dtype=torch.bfloat16, seed: int = 0, checkpoint=None):
    """transformers' UMT5EncoderModel: from a diffusers/HF `text_encoder/` folder, from upstream's
    `models_t5_umt5-xxl-enc-bf16.pth` (key map above), or seeded random weights."""
    from transformers import UMT5Config, UMT5EncoderModel

    if checkpoint is not None and Path(checkpoint).is_dir():
        if not (Path(checkpoint) / "config.json").exists():
            raise FileNotFoundError(f"{checkpoint} has no config.json: pass the diffusers text_encoder/ folder or the "
                                    f"official models_t5_umt5-xxl-enc-bf16.pth file")
        return UMT5EncoderModel.from_pretrained(checkpoint, torch_dtype=dtype).to(device).eval().requires_grad_(False)
    hf_config = UMT5Config(**asdict(config), is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
    model = _materialize(lambda: UMT5EncoderModel(hf_config), device, dtype)
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"T5 checkpoint {path} does not exist (upstream name: "
                                    f"models_t5_umt5-xxl-enc-bf16.pth in the model folder)")
        state = _torch_load(path, mmap=True)
        state = {t5_key_to_hf(k): v for k, v in state.items()}
        params = model.state_dict()
        tied = {"encoder.embed_tokens.weight"}
        missing = sorted(k for k in params if k not in state and k not in tied)
        unexpected = sorted(k for k in state if k not in params)
        mismatched = sorted((k, tuple(v.shape), tuple(params[k].shape)) for k, v in state.items()
                            if k in params and tuple(v.shape) != tuple(params[k].shape))
        if missing or unexpected or mismatched:
            raise CheckpointError(path, missing, unexpected, mismatched)
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
    else:
        init_random_(model, seed)
    model.tie_weights()
    return model.eval().requires_grad_(False)


def build_vae(config: VAEConfig, device="cpu", dtype=torch.float32, seed: int = 0, checkpoint=None):
    """diffusers' AutoencoderKLWan, in eval mode without gradients: seeded random weights (checkpoint None), or
    loaded strictly from a diffusers `vae/` folder (its config.json gives the architecture), a .safetensors file of
    AutoencoderKLWan keys, or upstream's `Wan2.1_VAE.pth` (through diffusers' own converter for that layout,
    `convert_wan_vae_to_diffusers`). One CheckpointError lists every missing, unexpected and mis-shaped key; any
    other file is refused with the layouts this accepts. (wanopt.vae.build_vae takes a config name and says so on
    the console when the weights are random.)"""
    from diffusers import AutoencoderKLWan

    kwargs = dict(base_dim=config.base_dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
                  num_res_blocks=config.num_res_blocks, temperal_downsample=list(config.temperal_downsample))
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**kwargs)
        return _to(vae, device, dtype)
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"VAE checkpoint {path} does not exist; pass upstream's Wan2.1_VAE.pth or a "
                                f"diffusers vae/ folder")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: pass a diffusers vae/ folder (config.json + "
                                    f"diffusion_pytorch_model.safetensors) or upstream's Wan2.1_VAE.pth")
        kwargs, state = AutoencoderKLWan.load_config(path), _read_safetensors(checkpoint_files(path))
    elif path.suffix == ".safetensors":
        state = _read_safetensors([path])
    elif path.suffix in (".pth", ".pt"):
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        state = convert_wan_vae_to_diffusers(_torch_load(path))
    else:
        raise ValueError(f"{path}: not a VAE checkpoint layout this reads. Pass upstream's Wan2.1_VAE.pth (a torch "
                         f"state dict with the original key names), a diffusers vae/ folder, or a .safetensors file "
                         f"of AutoencoderKLWan keys.")
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(kwargs)
    params = vae.state_dict()
    missing = sorted(k for k in params if k not in state)
    unexpected = sorted(k for k in state if k not in params)
    mismatched = sorted((k, tuple(v.shape), tuple(params[k].shape)) for k, v in state.items()
                        if k in params and tuple(v.shape) != tuple(params[k].shape))
    if missing or unexpected or mismatched:
        raise CheckpointError(path, missing, unexpected, mismatched, hint=(
            "A VAE of another size or family (the Wan2.2 VAE has z_dim 48), or a file of another model, gives this; "
            "pass Wan2.1_VAE.pth or the vae/ folder of a Wan2.1 / Wan2.2-A14B diffusers checkpoint."))
    vae.load_state_dict(state, strict=True, assign=True)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _read_safetensors(files) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in files:
        try:
            state.update(load_file(f))
        except SafetensorError as exc:
            raise CheckpointError.unreadable(f, exc) from exc
    return state


def _torch_load(path: Path, mmap: bool = False) -> dict:
    """torch.load of upstream's .pth files (T5, VAE), with a failure to read that names the file."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(path, message=f"{path} is not a readable PyTorch checkpoint ({exc}). A truncated or "
                                            f"interrupted download is the usual cause: download it again.") from exc


def _to(module, device, dtype):
    """Move, and cast only when needed (diffusers warns on any dtype cast of a model with fp32-kept modules)."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)

"""python -m wanopt generate: one video from a named workload, as an mp4 with a JSON of its timings beside it.

T2V runs the official pipeline (wanopt.pipelines.t2v.WanT2V: text encode, the denoising loop, one VAE decode).
Matrix-Game-2 makes the video block by block (wanopt.pipelines.causal.CausalPipeline) and decodes each block right
after it is made with wanopt.vae.StreamingDecoder, as upstream does; the frames go to the file block by block.

Everything asked for (workload, stages, size, frames, actions, image, checkpoint parts, output path) is checked
before any model is built; a problem is one GenerateError naming it and the fix (exit code 2). Without --checkpoint
every model is seeded random at the workload's size: the console says so in one line, the JSON records
`random_weights`, and the video is noise by construction.

Frame rates are upstream's: Wan saves at 16 fps (`sample_fps` in wan/configs/shared_config.py), Matrix-Game-2 at
12 fps (`fps = 12` in utils/visualize.py::process_video, which writes inference.py's demo.mp4).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .configs import Workload, get_config, get_mg2_config, get_workload
from .weights import CheckpointError, RandomWeightsWarning

FPS = {"t2v": 16, "mg2": 12}
MG2_DEFAULT_BLOCKS = 5  # 57 frames, under 5 s at 12 fps; upstream's inference.py makes 50 blocks (150 latent frames)
# The Matrix-Game-2 download (Skywork/Matrix-Game-2.0): the universal DiT and the Wan2.1 VAE, at these paths.
MG2_DIT = Path("base_distilled_model") / "base_distill.safetensors"
MG2_VAE = Path("Wan2.1_VAE.pth")

# Action patterns, in the universal layout of the Matrix-Game-2 workloads: keyboard columns W S A D (multi-hot),
# then the camera's (pitch, yaw) per frame; 0.1 is upstream's camera step (utils/conditions.py, CAM_VALUE).
KEYS = ("forward", "back", "left", "right")
CAM = 0.1
PATTERNS = {  # name -> (keys held, (pitch, yaw))
    "still": ((), (0.0, 0.0)),
    "forward": (("forward",), (0.0, 0.0)),
    "back": (("back",), (0.0, 0.0)),
    "strafe-left": (("left",), (0.0, 0.0)),
    "strafe-right": (("right",), (0.0, 0.0)),
    "turn-left": ((), (0.0, -CAM)),
    "turn-right": ((), (0.0, CAM)),
    "forward-turn-left": (("forward",), (0.0, -CAM)),
    "forward-turn-right": (("forward",), (0.0, CAM)),
}
RANDOM = "random"  # one pattern per block, drawn with --seed: what a player pressing keys block by block gives


class GenerateError(ValueError):
    """A request that cannot run, found before any model is built: the message names the problem and the fix."""


@dataclass
class Request:
    """A checked request: every field is valid for its workload."""

    workload: Workload
    out: Path
    stages: list[str]
    seed: int
    checkpoint: Path | None
    prompt: str | None = None  # T2V
    size: tuple[int, int] | None = None
    frames: int | None = None
    steps: int | None = None
    blocks: int | None = None  # Matrix-Game-2
    actions: str | None = None
    keyboard: torch.Tensor | None = None  # [1, frames, keys]
    mouse: torch.Tensor | None = None  # [1, frames, 2] or None
    image: Path | None = None

    @property
    def family(self) -> str:
        return self.workload.family

    @property
    def json_path(self) -> Path:
        return Path(str(self.out) + ".json")


def add_arguments(parser):
    """The `generate` subcommand's options (python -m wanopt generate --help)."""
    parser.add_argument("--workload", required=True, help="a named workload (python -m wanopt workloads)")
    parser.add_argument("--out", required=True, help="the .mp4 to write; the JSON goes beside it as OUT.json")
    parser.add_argument("--stages", default="", help="'all', or comma-separated stage names to apply (python -m "
                                                     "wanopt stages); default none: the official baseline")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights, the noise and the random "
                                                             "actions (default 0)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint folder (T2V: official or diffusers layout; Matrix-Game-2: the "
                             f"Matrix-Game-2.0 download with {MG2_DIT} and {MG2_VAE}); default: random weights")
    t2v = parser.add_argument_group("text-to-video")
    t2v.add_argument("--prompt", help="the text prompt (required for T2V)")
    t2v.add_argument("--size", help="WIDTH*HEIGHT, multiples of 16 (default: the workload's)")
    t2v.add_argument("--frames", type=int, help="video frames, 1 + 4k (default: the workload's)")
    t2v.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    mg2 = parser.add_argument_group("Matrix-Game-2")
    mg2.add_argument("--image", help="the start image (default: random conditioning)")
    mg2.add_argument("--actions", help=f"a pattern ({', '.join([*PATTERNS, RANDOM])}; default {RANDOM}) or a .json / "
                                       ".npy file of one row per video frame: W S A D (0/1), pitch, yaw")
    mg2.add_argument("--blocks", type=int, help=f"blocks of 3 latent frames (default {MG2_DEFAULT_BLOCKS}): "
                                                "9 video frames, then 12 per block")


# -- checking ------------------------------------------------------------------------------------------------------


def check(args) -> Request:
    """The request, or one GenerateError (KeyError for an unknown workload or stage, CheckpointError for missing
    checkpoint parts): nothing here builds a model."""
    from .stages import get_stage, stage_order

    wl = get_workload(args.workload)
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise GenerateError(f"--out {args.out}: name an .mp4 file, e.g. --out {out.with_suffix('.mp4')}")
    if out.parent.exists() and not out.parent.is_dir():
        raise GenerateError(f"--out {args.out}: {out.parent} is a file, not a folder")
    if args.stages.strip() == "all":  # every stage of the workload's family, in its order
        stages = [s.name for s in stage_order(wl.name) if s.apply is not None]
    else:
        stages = [get_stage(n.strip(), wl.name).name for n in args.stages.split(",") if n.strip()]
    other = ("prompt", "size", "frames", "steps") if wl.family == "mg2" else ("image", "actions", "blocks")
    given = [f"--{o}" for o in other if getattr(args, o) is not None]
    if given:
        kind = "Matrix-Game-2" if wl.family == "mg2" else "text-to-video"
        raise GenerateError(f"{', '.join(given)}: not an option of {wl.name} ({kind}); leave "
                            f"{'it' if len(given) == 1 else 'them'} out")
    checkpoint = Path(args.checkpoint) if args.checkpoint is not None else None
    if checkpoint is not None and not checkpoint.is_dir():
        raise GenerateError(f"--checkpoint {args.checkpoint}: no such folder; pass the folder that holds the model, or "
                            f"leave --checkpoint out for random weights")
    req = Request(wl, out, stages, args.seed, checkpoint)
    (_check_t2v if wl.family == "t2v" else _check_mg2)(req, args)
    return req


def _check_t2v(req: Request, args):
    config = get_config(req.workload.config)
    if not args.prompt:
        raise GenerateError(f'{req.workload.name} is text-to-video: give --prompt "..."')
    req.prompt = args.prompt
    req.size = _parse_size(args.size) if args.size else tuple(req.workload.size)
    multiple = config.vae_stride[1] * config.dit.patch_size[1]
    w, h = req.size
    if w % multiple or h % multiple:
        fix = f"{_round(w, multiple)}*{_round(h, multiple)}"
        raise GenerateError(f"--size {w}*{h}: width and height must be multiples of {multiple} (the VAE's "
                            f"{config.vae_stride[1]}x stride times the DiT's {config.dit.patch_size[1]}x patch); "
                            f"e.g. --size {fix}")
    req.frames = args.frames if args.frames is not None else req.workload.frame_num
    st = config.vae_stride[0]
    if req.frames < 1 or (req.frames - 1) % st:
        fix = 1 + st * max(1, round((req.frames - 1) / st))
        raise GenerateError(f"--frames {req.frames}: must be 1 + {st}k (the VAE packs {st} frames into each latent "
                            f"frame after the first); e.g. --frames {fix}")
    req.steps = args.steps if args.steps is not None else config.sample_steps
    if req.steps < 1:
        raise GenerateError(f"--steps {req.steps}: give at least 1 (the model's default is {config.sample_steps})")
    if req.checkpoint is not None:
        from .pipelines.t2v import COMPONENTS, CheckpointLayout

        absent = CheckpointLayout.find(config, req.checkpoint).missing(COMPONENTS)
        if absent:
            raise CheckpointError.missing_components(req.checkpoint, absent, hint=(
                "Put them there (official layout: the DiT folder(s), models_t5_umt5-xxl-enc-bf16.pth, Wan2.1_VAE.pth, "
                "google/umt5-xxl/; diffusers layout: transformer/, text_encoder/, tokenizer/, vae/), or leave "
                "--checkpoint out for random weights."))


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", "*").split("*")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise GenerateError(f"--size {text}: give WIDTH*HEIGHT, e.g. --size 832*480") from None
    if w <= 0 or h <= 0:
        raise GenerateError(f"--size {text}: width and height must be positive, e.g. --size 832*480")
    return w, h


def _round(n: int, multiple: int) -> int:
    return max(multiple, round(n / multiple) * multiple)


def _check_mg2(req: Request, args):
    config = get_mg2_config(req.workload.config)
    req.blocks = args.blocks if args.blocks is not None else MG2_DEFAULT_BLOCKS
    if req.blocks < 1:
        raise GenerateError(f"--blocks {req.blocks}: give at least 1")
    req.actions = args.actions or RANDOM
    rows = _action_rows(req.actions, config, req.blocks, req.seed)
    keys = config.action.keyboard_dim_in
    req.keyboard = torch.from_numpy(rows[None, :, :keys]).float()
    req.mouse = torch.from_numpy(rows[None, :, keys:]).float() if config.action.enable_mouse else None
    if args.image is not None:
        req.image = Path(args.image)
        _check_image(req.image)
    if req.checkpoint is not None:
        looked = {"dit": [req.checkpoint / MG2_DIT], "vae": [req.checkpoint / MG2_VAE]}
        absent = {name: paths for name, paths in looked.items() if not paths[0].is_file()}
        if absent:
            raise CheckpointError.missing_components(req.checkpoint, absent, hint=(
                "Pass the Matrix-Game-2.0 download folder (Skywork/Matrix-Game-2.0), or leave --checkpoint out for "
                "random weights."))


def block_frames(config) -> tuple[int, int]:
    """Video frames of a Matrix-Game-2 video's first block and of each later one: 1 + 4·(3 − 1) = 9, then 4·3 = 12
    (the first latent frame decodes to one frame, every later one to 4); one action row per video frame."""
    ratio, f = config.action.vae_time_compression_ratio, config.num_frame_per_block
    return 1 + ratio * (f - 1), ratio * f


def _action_rows(spec: str, config, blocks: int, seed: int) -> np.ndarray:
    """[video frames, keys + mouse columns] float32 actions from a pattern name or a .json / .npy file."""
    first, later = block_frames(config)
    frames = first + later * (blocks - 1)
    columns = config.action.keyboard_dim_in + (config.action.mouse_dim_in if config.action.enable_mouse else 0)
    layout = "W S A D (0/1), pitch, yaw"
    if spec in PATTERNS or spec == RANDOM:
        names = list(PATTERNS)
        per_block = ([spec] * blocks if spec != RANDOM else
                     [names[i] for i in np.random.default_rng(seed).integers(len(names), size=blocks)])
        return np.concatenate([np.repeat(_pattern_row(name, columns)[None], first if b == 0 else later, 0)
                               for b, name in enumerate(per_block)])
    path = Path(spec)
    if path.suffix.lower() not in (".json", ".npy"):
        raise GenerateError(f"--actions {spec}: not a pattern and not a .json / .npy file. Patterns: "
                            f"{', '.join([*PATTERNS, RANDOM])}; a file holds one row per video frame: {layout}")
    if not path.is_file():
        raise GenerateError(f"--actions {spec}: no such file")
    try:
        rows = np.load(path) if path.suffix.lower() == ".npy" else np.asarray(json.loads(path.read_text()))
        rows = rows.astype(np.float32)
    except (ValueError, TypeError, OSError) as exc:
        raise GenerateError(f"--actions {spec}: not a readable array of numbers ({exc}); give one row per video "
                            f"frame: {layout}") from None
    if rows.ndim != 2 or rows.shape[1] != columns:
        raise GenerateError(f"--actions {spec}: shape {list(rows.shape)}; give [frames, {columns}]: one row per video "
                            f"frame, {layout}")
    if rows.shape[0] != frames:
        fits = rows.shape[0] >= first and (rows.shape[0] - first) % later == 0
        hint = f", or pass --blocks {1 + (rows.shape[0] - first) // later}" if fits else ""
        raise GenerateError(f"--actions {spec}: {rows.shape[0]} rows, but {blocks} block(s) make {frames} video "
                            f"frames ({first}, then {later} per block), one row each: give {frames} rows{hint}")
    return rows


def _pattern_row(name: str, columns: int) -> np.ndarray:
    keys, (pitch, yaw) = PATTERNS[name]
    row = np.zeros(columns, np.float32)
    for k in keys:
        row[KEYS.index(k)] = 1
    row[len(KEYS):] = (pitch, yaw)
    return row


def _check_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise GenerateError(f"--image {path}: no such file")
    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as exc:
        raise GenerateError(f"--image {path}: not a readable image ({exc}); give a PNG or JPEG") from None


# -- running -------------------------------------------------------------------------------------------------------


def run(args) -> int:
    """The subcommand: check the request (exit 2 with the problem and the fix), build, generate, write."""
    try:
        req = check(args)
    except (GenerateError, CheckpointError, KeyError) as exc:
        return _refuse(exc)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    req.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        record = (_generate_t2v if req.family == "t2v" else _generate_mg2)(req, device)
    except CheckpointError as exc:  # keys that do not fit the model: found only while loading
        return _refuse(exc)
    record["timings_s"]["total"] = time.perf_counter() - start
    record = {"workload": req.workload.name, "family": req.family, "config": req.workload.config,
              "device": str(device), "seed": req.seed, "checkpoint": None if req.checkpoint is None else
              str(req.checkpoint), "fps": FPS[req.family], **record}
    req.json_path.write_text(json.dumps(record, indent=2) + "\n")
    w, h = record["size"]
    print(f"wrote {req.out} ({record['frames']} frames, {w}x{h}, {record['fps']} fps) and {req.json_path}")
    return 0


def _refuse(exc: Exception) -> int:
    print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
    return 2


def _now(device: torch.device) -> float:
    """Wall time once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@contextlib.contextmanager
def _quiet_random():
    """The builders' RandomWeightsWarnings held back: the command says it in one line for all components."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        yield


TRACES = Path(__file__).resolve().parents[1] / "traces"


def recorded_choices(workload: Workload, device: torch.device, traces: Path = TRACES) -> tuple[dict, str]:
    """The stage options that the workload's committed capture measured (`choices` in traces/<workload>/capture.json:
    the attention kernels, the GELU epilogue), where that capture ran on this GPU model: ({stage: options}, where
    from). Elsewhere ({}, why not): the stages then take their unmeasured defaults, and the console says so."""
    run = traces / workload.name / "capture.json"
    if device.type != "cuda":
        return {}, "defaults (no GPU: nothing measured applies)"
    if not run.is_file():
        return {}, f"defaults (no committed capture of {workload.name} at {run})"
    recorded = json.loads(run.read_text())
    here, there = torch.cuda.get_device_name(device), recorded.get("env", {}).get("device")
    if here != there:
        return {}, f"defaults (the capture of {workload.name} ran on {there}, this GPU is {here})"
    return ({name: c["options"] for name, c in recorded.get("choices", {}).items()},
            f"measured by capture run {recorded.get('run_id')} on {there} ({run.relative_to(traces.parent)})")


def _apply(pipe, req: "Request", device: torch.device):
    """The requested stages, with the options measured on this GPU where a committed capture has them."""
    from .stages import apply_stages

    options, source = recorded_choices(req.workload, device)
    chosen = {n: o for n, o in options.items() if n in req.stages}
    if req.stages:
        print(f"stage options: {source}" + (f": {chosen}" if chosen else ""), file=sys.stderr)
    pipe = apply_stages(pipe, req.stages, workload=req.workload.name, options=chosen)
    pipe.stage_options = {"source": source, "options": chosen}
    return pipe


def _announce_random(random: tuple[str, ...]):
    if random:
        print(f"random weights for {', '.join(random)} (no --checkpoint): the video is noise by construction",
              file=sys.stderr)


def _generate_t2v(req: Request, device: torch.device) -> dict:
    from .pipelines.t2v import WanT2V

    t0 = _now(device)
    with _quiet_random():
        pipe = WanT2V(req.workload.config, checkpoint_dir=req.checkpoint, device=device, seed=req.seed)
    pipe = _apply(pipe, req, device)
    _announce_random(pipe.random_components)
    t1 = _now(device)
    context, context_null = pipe.encode_prompt(req.prompt)
    t2 = _now(device)
    state = pipe.prepare(context, context_null, size=req.size, frame_num=req.frames, sampling_steps=req.steps,
                         seed=req.seed)
    steps = []
    for _ in tqdm(range(len(state.timesteps)), desc="denoise", unit="step"):
        t = _now(device)
        pipe.denoise_step(state)
        steps.append(_now(device) - t)
    pipe.offload_all()
    t3 = _now(device)
    video = pipe.decode(state.latents)[0]
    t4 = _now(device)
    with Mp4Writer(req.out, FPS["t2v"]) as writer:
        writer.write(video)
    return {"stages": getattr(pipe, "applied_stages", []), "stage_options": pipe.stage_options, "prompt": req.prompt,
            "steps": req.steps,
            "frames": writer.frames, "size": list(req.size), "random_weights": bool(pipe.random_components),
            "random_components": list(pipe.random_components),
            "timings_s": {"build": t1 - t0, "encode": t2 - t1, "denoise": sum(steps), "decode": t4 - t3,
                          "steps": steps}}


def _generate_mg2(req: Request, device: torch.device) -> dict:
    from .pipelines.causal import CausalPipeline
    from .vae import StreamingDecoder, build_vae, mg2_vae_config

    config = get_mg2_config(req.workload.config)
    ckpt = req.checkpoint
    t0 = _now(device)
    with _quiet_random():
        pipe = CausalPipeline(config, device=device, seed=req.seed, checkpoint=None if ckpt is None else ckpt / MG2_DIT)
        vae = build_vae(mg2_vae_config(config.name), device=device, dtype=torch.float32,
                        checkpoint=None if ckpt is None else ckpt / MG2_VAE, seed=req.seed + 200)
    pipe.attach_decoder(StreamingDecoder(vae))
    pipe = _apply(pipe, req, device)  # an end-to-end workload's decode stages work on the attached decoder
    random = pipe.random_components + (("vae",) if ckpt is None else ())
    _announce_random(random)
    if ckpt is not None:
        print("note: the CLIP image tokens are a seeded random stand-in (wanopt has no CLIP image encoder): the video "
              "is not the released model's", file=sys.stderr)
    t1 = _now(device)
    cond_concat = None if req.image is None else encode_image(vae, req.image, config, req.blocks)
    t2 = _now(device)
    state = pipe.start(req.blocks, seed=req.seed, cond_concat=cond_concat, keyboard=req.keyboard, mouse=req.mouse)
    blocks = []
    pipe.decoder.reset()
    with Mp4Writer(req.out, FPS["mg2"]) as writer:
        for _ in tqdm(range(req.blocks), desc="blocks", unit="block"):
            t = _now(device)
            if pipe.decode_overlap:  # the block, and the block before's decode on a second stream at the same time
                frames = pipe.next_frames(state)
                blocks.append({"block_and_overlapped_decode": _now(device) - t})
            else:
                x0 = pipe.next_block(state)
                t_made = _now(device)
                frames = pipe.decoder.decode_block(x0)
                blocks.append({"denoise": t_made - t, "decode": _now(device) - t_made})
            if frames is not None:
                writer.write(frames[0])
        last = pipe.flush()
        if last is not None:
            writer.write(last[0])
            frames = last
    h, w = frames.shape[-2:]
    return {"stages": getattr(pipe, "applied_stages", []), "stage_options": pipe.stage_options, "blocks": req.blocks,
            "actions": req.actions,
            "image": None if req.image is None else str(req.image), "clip_tokens": "random",
            "frames": writer.frames, "size": [w, h], "random_weights": bool(random), "random_components": list(random),
            "timings_s": {"build": t1 - t0, "encode": t2 - t1,
                          **{phase: sum(b[phase] for b in blocks) for phase in blocks[0]}, "blocks": blocks}}


@torch.no_grad()
def encode_image(vae, path: Path, config, blocks: int) -> torch.Tensor:
    """Upstream inference.py's image condition: the image centre-cropped to the video's aspect and resized to it, in
    [-1, 1], followed by black frames to the video's length, VAE-encoded (the posterior mean, normalised with
    latents_mean / latents_std); then a 4-channel mask that is 1 on the first latent frame in front of it:
    [1, 4 + z_dim, latent frames, h, w], the pipeline's cond_concat."""
    from PIL import Image

    h, w = (vae.spatial_compression_ratio * s for s in config.latent_hw)
    with Image.open(path) as im:
        image = _resize_crop(im.convert("RGB"), w, h)
    first, later = block_frames(config)
    device = vae.device
    video = torch.zeros(1, 3, first + later * (blocks - 1), h, w, device=device, dtype=vae.dtype)
    video[0, :, 0] = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).to(device, vae.dtype) / 127.5 - 1
    mu = vae.encode(video).latent_dist.mode().float()
    cfg = vae.config
    latent = (mu - torch.tensor(cfg.latents_mean, device=device).view(1, -1, 1, 1, 1)) / torch.tensor(
        cfg.latents_std, device=device).view(1, -1, 1, 1, 1)
    mask = torch.zeros_like(latent[:, :4])
    mask[:, :, 0] = 1
    return torch.cat([mask, latent], dim=1)


def _resize_crop(image, w: int, h: int):
    """Upstream `_resizecrop` (centre crop to the target aspect), then the resize to w×h."""
    from PIL import Image

    iw, ih = image.size
    cw, ch = (iw, round(iw * h / w)) if ih / iw > h / w else (round(ih * w / h), ih)
    left, top = (iw - cw) // 2, (ih - ch) // 2
    return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)


class Mp4Writer:
    """An H.264 mp4 through PyAV, written as frames come: each `write` takes [3, T, H, W] in [-1, 1] and stores 8-bit
    RGB as upstream's savers do ((x + 1) / 2 · 255)."""

    def __init__(self, path: Path, fps: int):
        import av

        self._av = av
        self.container = av.open(str(path), "w")
        self.fps, self.stream, self.frames = fps, None, 0

    def write(self, video: torch.Tensor):
        frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
        if self.stream is None:  # sized by the first frames
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.height, self.stream.width = frames.shape[1:3]
            self.stream.pix_fmt = "yuv420p"
        for frame in frames:
            self.container.mux(self.stream.encode(self._av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += len(frames)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.stream is not None:
            self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        self.container.close()


__all__ = ["FPS", "PATTERNS", "GenerateError", "Request", "add_arguments", "check", "run", "encode_image",
           "block_frames", "Mp4Writer"]

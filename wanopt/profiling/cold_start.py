"""Cold start of a Matrix-Game-2 stage: process start to the first block's latents out, in a fresh process.

`python -m wanopt.profiling.cold_start --workload mg2-universal --stages 00_baseline,...,07_cuda_graphs
--options '{"04_attention": {...}}'` imports wanopt, builds the pipeline (random weights unless --checkpoint),
applies the stages with the given options (the capture passes the ones it chose), makes block 0 of a video and
prints one JSON line: the wall-clock time at which block 0 was out and the phases. For an end-to-end workload
block 0's frames are what is out (its VAE decode included), and the second block's frames are timed too: the
decode stages compile and capture on a video's first steady block. The capture runs it as a child
and subtracts its own launch time, so interpreter start and imports are inside the number; so are torch.compile
and the CUDA-graph captures of block 0 (upstream's first block stalls 1-2 minutes on the same work), with empty
Inductor and Triton caches: nothing compiled earlier in the run is reused.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402


def cold_start(workload: str, stages: list[str], options: dict, seed: int = 0, checkpoint=None) -> dict:
    """Measured in a child process (see the module docstring); the child's phases plus `process_to_first_block_s`."""
    cmd = [sys.executable, "-m", "wanopt.profiling.cold_start", "--workload", workload, "--stages", ",".join(stages),
           "--options", json.dumps(options), "--seed", str(seed)] + (["--checkpoint", checkpoint] if checkpoint else [])
    with tempfile.TemporaryDirectory() as cache:  # cold: no Inductor or Triton cache from this run's compiles
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor", "TRITON_CACHE_DIR": f"{cache}/triton"}
        launched = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["process_to_first_block_s"] = out.pop("first_block_out") - launched
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m wanopt.profiling.cold_start")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--stages", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    t0 = time.time()
    import torch

    from ..configs import get_workload
    from ..pipelines.causal import CausalPipeline
    from ..stages import apply_stage, get_stage

    imported = time.time()
    wl = get_workload(args.workload)
    pipe = CausalPipeline(wl.config, seed=args.seed, checkpoint=args.checkpoint)  # the GPU where there is one
    if wl.decode:
        from ..vae import StreamingDecoder, build_vae, mg2_vae_config

        dtype = torch.float16 if pipe.device.type == "cuda" else torch.float32
        pipe.attach_decoder(StreamingDecoder(build_vae(mg2_vae_config(pipe.config.name), device=pipe.device,
                                                       dtype=dtype, seed=args.seed + 200)))
    built = time.time()
    options = json.loads(args.options)
    for name in args.stages.split(","):
        pipe = apply_stage(pipe, get_stage(name, wl.name), options.get(name, {}))
    applied = time.time()
    state = pipe.start(2, seed=args.seed)
    (pipe.next_frames if wl.decode else pipe.next_block)(state)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    out = time.time()
    phases = {"interpreter_s": t0 - PROCESS_START, "import_s": imported - t0, "build_s": built - imported,
              "apply_s": applied - built, "first_block_s": out - applied}
    if wl.decode:
        if pipe.next_frames(state) is None:
            pipe.flush()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        phases["second_block_s"] = time.time() - out
    print(json.dumps({"first_block_out": out, **phases}))


if __name__ == "__main__":
    main()

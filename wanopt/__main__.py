"""python -m wanopt capture | generate | render | table | stages | workloads

  capture    time and profile a workload's stages on a CUDA GPU: ceilings, CUDA-event timing, traces, manifests
  generate   make one video of a workload (random weights or a checkpoint): an mp4 and a JSON of phase timings
  render     execute every notebook on this machine (CPU is enough) and write its outputs and build/html/
  table      the results table from the committed manifests (markdown, as in the README, or JSON rows)
  stages     the optimization stages of each family, in order
  workloads  the named workloads
"""

from __future__ import annotations

import argparse
import json
import sys


def _stage_lines() -> list[str]:
    from .stages import FAMILY_STAGES

    lines = []
    for family, stages in FAMILY_STAGES.items():
        lines.append(f"{family}:")
        width = max(len(s.name) for s in stages)
        for s in stages:
            lines.append(f"  {s.name:<{width}}  {'exact  ' if s.exact else 'numeric'}  tol {s.tolerance:<6g}  {s.title}")
    return lines


def _parser() -> argparse.ArgumentParser:
    from .configs import WORKLOADS
    from .generate import add_arguments as add_generate_arguments

    parser = argparse.ArgumentParser(prog="python -m wanopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{capture,generate,render,table,stages,workloads}")
    cap = sub.add_parser(
        "capture", help="time and profile a workload's stages (needs a CUDA GPU)",
        description="Time and profile a workload's stages on a CUDA GPU: per stage a manifest and a torch.profiler "
                    "trace under OUT/<workload>/<stage>/. Needs a CUDA GPU; without one it stops and points at the "
                    "committed traces/. A workload of world size N (the -sp<N> ones: sequence parallel) runs "
                    "under `torchrun --nproc-per-node N -m wanopt capture ...`. Stages, in each family's order:\n"
                    + "\n".join(_stage_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cap.add_argument("--workload", required=True, help=f"a named workload: {', '.join(WORKLOADS)}")
    cap.add_argument("--stages", default="all", help="comma-separated stage names, or 'all' (default)")
    cap.add_argument("--out", default="traces", help="output folder (default traces/)")
    cap.add_argument("--checkpoint", default=None, help="a local checkpoint instead of random weights")
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--no-profile", action="store_true", help="time only, write no traces")
    cap.add_argument("--peers", action="store_true", help="also time diffusers' WanTransformer3DModel (T2V)")
    cap.add_argument("--compare-alternatives", action="store_true",
                     help="also time each stage's alternative in the same run (whole-model against regional "
                          "compile)")
    cap.add_argument("--attention-backend", default=None,
                     help="force the attention stage's kernel instead of the fastest measured, e.g. fa4")
    cap.add_argument("--allow-cpu", action="store_true",
                     help="run without a GPU (gloo between CPU processes under torchrun): the bookkeeping of a tiny "
                          "workload, as CI checks it; its times mean nothing")
    gen = sub.add_parser(
        "generate", help="make one video of a workload: an mp4 and a JSON of its timings",
        description="Make one video of a workload on this machine (a CUDA GPU if there is one, else the CPU) and "
                    "write it as an mp4 with OUT.json beside it: per-phase timings, stages, seed, frames, fps and "
                    "whether the weights were random. Without --checkpoint every model is seeded random: the video "
                    "is noise. The request is checked before any model is built.")
    add_generate_arguments(gen)
    ren = sub.add_parser("render", help="execute the notebooks and write build/html/",
                         description="Execute the notebooks on this machine (they read committed traces and run "
                                     "tiny models: no GPU needed), write their outputs in place and build/html/.")
    ren.add_argument("notebooks", nargs="*", help="notebook paths under notebooks/ or unique parts of them "
                                                  "(default: all, in reading order)")
    tab = sub.add_parser("table", help="the results table from traces/ (markdown or JSON)",
                         description="The README's results table, from the committed manifests.")
    tab.add_argument("--format", choices=("markdown", "json"), default="markdown")
    sub.add_parser("stages", help="list the optimization stages in order",
                   description="The optimization stages of each family, in their default order: name, exact "
                               "or numeric, tolerance against the baseline, what it does.")
    sub.add_parser("workloads", help="list the named workloads", description="The named workloads: name, family, model config and what one timed unit "
                                "holds.")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["render"]:  # render has options of its own (--sync, --verbose): it parses them
        from .render import main as render_main

        return render_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "table":
        from .profiling.results import readme_table, result_rows

        print(json.dumps(result_rows(), indent=2) if args.format == "json" else readme_table())
        return 0
    if args.command == "stages":
        print("\n".join(_stage_lines()))
        return 0
    if args.command == "generate":
        from .generate import run

        return run(args)
    if args.command == "workloads":
        from .configs import WORKLOADS

        width = max(len(w) for w in WORKLOADS)
        cwidth = max(len(w.config) for w in WORKLOADS.values())
        for w in WORKLOADS.values():
            print(f"{w.name:<{width}}  {w.family:<3}  {w.config:<{cwidth}}  {w.step}")
        return 0

    from .profiling.capture import CaptureNeedsGPU, capture, check_request, require_cuda

    try:  # what the user asked for is checked first; anything later is a real failure, with its traceback
        check_request(args.workload, args.stages, args.peers, args.attention_backend)
        if not args.allow_cpu:
            require_cuda()
    except CaptureNeedsGPU as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    summary = capture(args.workload, args.stages, args.out, checkpoint=args.checkpoint, seed=args.seed,
                      profile=not args.no_profile, peers=args.peers, compare_alternatives=args.compare_alternatives,
                      attention_backend=args.attention_backend, allow_cpu=args.allow_cpu)
    if "failed" in summary:
        print(f"error: stage {summary['failed']['stage']} failed ({summary['failed']['error'][:300]}); the stages "
              f"before it are written under {args.out}/{args.workload}/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

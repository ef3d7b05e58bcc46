"""python -m wanopt capture | stages | workloads

  capture    run a workload's stages on a GPU: ceilings, timing, traces, manifests (see wanopt.profiling.capture)
  render     execute every notebook on this machine and write its outputs (and build/html/)
  table      print the README's results table from the committed manifests
  stages     list the optimization stages in their order
  workloads  list the named workloads
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cap = sub.add_parser("capture", help="time and profile a workload's stages on a GPU")
    cap.add_argument("--workload", required=True, help="a named workload (python -m wanopt workloads)")
    cap.add_argument("--stages", default="all", help="comma-separated stage names, or 'all' (default)")
    cap.add_argument("--out", default="traces", help="output folder (default traces/)")
    cap.add_argument("--checkpoint", default=None, help="a local checkpoint folder instead of random weights")
    cap.add_argument("--seed", type=int, default=0)
    cap.add_argument("--no-profile", action="store_true", help="time only, write no traces")
    cap.add_argument("--peers", action="store_true", help="also time diffusers' WanTransformer3DModel (T2V)")
    cap.add_argument("--compare-whole-compile", action="store_true",
                     help="also time a whole-model torch.compile before the regional one (T2V)")
    cap.add_argument("--attention-backend", default=None,
                     help="force stage 05's attention kernel instead of the fastest measured (T2V), e.g. fa4")
    cap.add_argument("--errors-only", action="store_true",
                     help="no timing: per stage, the error against the baseline; --workload may list several "
                          "comma-separated workloads of one model (T2V)")
    ren = sub.add_parser("render", help="execute the notebooks in place and write build/html/")
    ren.add_argument("notebooks", nargs="*", help="parts of notebook names (default: all)")
    sub.add_parser("table", help="print the README results table from traces/")
    sub.add_parser("stages", help="list the optimization stages")
    sub.add_parser("workloads", help="list the named workloads")
    args = parser.parse_args(argv)

    if args.command == "render":
        from .render import render

        render(args.notebooks or None)
        return 0
    if args.command == "table":
        from .profiling.report import readme_table

        print(readme_table())
        return 0
    if args.command == "stages":
        from .stages import T2V_STAGES

        for s in T2V_STAGES:
            print(f"{s.name:<18} {'exact' if s.exact else 'numeric'}  tol {s.tolerance:g}  {s.title}")
        return 0
    if args.command == "workloads":
        from .configs import WORKLOADS

        for w in WORKLOADS.values():
            print(f"{w.name:<16} {w.config:<18} {w.step}")
        return 0

    from .profiling.capture import CaptureNeedsGPU, capture, capture_errors

    try:
        if args.errors_only:
            capture_errors(args.workload.split(","), args.stages, args.out, seed=args.seed)
            return 0
        capture(args.workload, args.stages, args.out, checkpoint=args.checkpoint, seed=args.seed,
                profile=not args.no_profile, peers=args.peers, compare_whole_compile=args.compare_whole_compile,
                attention_backend=args.attention_backend)
    except CaptureNeedsGPU as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a stage is: its function, its tolerance and, where it picks among options by measurement, its choice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ChoiceContext:
    """What a stage sees when it chooses its options: where it runs, the workload's shapes, what the run already
    measured (the ceilings: every attention kernel at each attention shape), and what the user forced."""

    device: str = "cpu"
    shapes: dict = field(default_factory=dict)  # tokens, cfg_batch, dim, ffn_dim, heads, head_dim, text_len
    ceilings: dict | None = None
    forced: dict = field(default_factory=dict)  # e.g. {"attention_backend": "fa4"}


@dataclass(frozen=True)
class Choice:
    options: dict  # the keyword arguments of the stage's apply
    evidence: dict = field(default_factory=dict)  # what the choice was made from (timings, rates, "forced")


@dataclass(frozen=True)
class Stage:
    name: str  # traces/<workload>/<name>/ and notebooks/<family>/<name>.ipynb
    apply: Callable | None
    title: str
    exact: bool  # math unchanged (fp32-level differences only)
    tolerance: float  # relative L2 against the baseline on the same inputs (metric: the family's runner)
    choose: Callable[[ChoiceContext], Choice] | None = None
    compiles: bool = False  # its first call compiles or captures: the warm-up minus a timed call is reported
    # another way to do the same (label, apply, undo), timed in the same run when the capture is asked to
    alternative: tuple[str, Callable, Callable] | None = None
    # tolerances of a runner's further error parts (the end-to-end MG2 runner's "decode": relative L2 of decoded
    # frames against the reference decode of the same latents), where the stage sets one
    part_tolerances: dict = field(default_factory=dict)
    # runs on every rank of a torchrun world (sequence parallel): captured on all ranks, a trace per rank; the
    # single-GPU stages before it are captured on rank 0 alone
    distributed: bool = False

    def options(self, ctx: ChoiceContext | None = None) -> Choice:
        """The stage's options in this context (no options for a stage without a choice)."""
        return self.choose(ctx or ChoiceContext()) if self.choose is not None else Choice({})

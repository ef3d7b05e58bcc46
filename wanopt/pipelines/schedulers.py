"""Flow-matching samplers of the Wan T2V path, built on diffusers' schedulers.

Upstream's `FlowUniPCMultistepScheduler` (wan/utils/fm_solvers_unipc.py) is adapted from diffusers' UniPC; diffusers'
own UniPCMultistepScheduler computes the same steps once it is given upstream's sigma table. What differs by default
is the table: diffusers starts its flow sigmas at 1 - 1e-6 over linspace(1, 1/1000), upstream at the float32 value
of 0.999 over linspace(0.999, 0). We pass upstream's table, so the DiT sees upstream's
int64-truncated timesteps (999 997 ... 235 for A14B).
"""

from __future__ import annotations

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

# sigmas = 1 - linspace(1, 1/1000, 1000)[::-1] as float32; the first one, 0.999, is upstream's sigma_max
SIGMA_MAX = float(np.float32(0.999))
SIGMA_MIN = 0.0


def upstream_sigmas(num_steps: int) -> np.ndarray:
    """linspace(sigma_max, sigma_min, N+1)[:-1], before the time shift (the scheduler applies the shift)."""
    return np.linspace(SIGMA_MAX, SIGMA_MIN, num_steps + 1)[:-1]


def flow_unipc(num_steps: int, shift: float, num_train_timesteps: int = 1000, device=None) -> UniPCMultistepScheduler:
    """Flow-matching UniPC as upstream runs it: order 2, bh2, x0 prediction, lower order on the last step,
    final sigma 0, int64 timesteps."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sched = UniPCMultistepScheduler(
        num_train_timesteps=num_train_timesteps, solver_order=2, prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=shift, predict_x0=True, solver_type="bh2", lower_order_final=True,
        final_sigmas_type="zero", disable_corrector=[])
    sched.set_timesteps(sigmas=upstream_sigmas(num_steps), device=device)
    return sched


def flow_euler(num_steps: int, shift: float, num_train_timesteps: int = 1000, device=None):
    """Flow Euler on the same shifted sigma table: x_next = x + (sigma_next - sigma) * v. Its timesteps are the
    float sigma·1000 (no truncation: this sampler is not upstream's)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    sched.set_timesteps(sigmas=upstream_sigmas(num_steps), device=device)
    return sched


SOLVERS = {"unipc": flow_unipc, "euler": flow_euler}


def make_scheduler(solver: str, num_steps: int, shift: float, device=None):
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")
    return SOLVERS[solver](num_steps, shift, device=device)


def timesteps_for(solver: str, num_steps: int, shift: float) -> list:
    """The timesteps the DiT sees, as Python numbers."""
    return make_scheduler(solver, num_steps, shift).timesteps.tolist()


__all__ = ["flow_unipc", "flow_euler", "make_scheduler", "timesteps_for", "upstream_sigmas"]

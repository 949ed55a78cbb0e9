r"""Many tiny-GPT training runs at once: a learning-rate x clipping-method x seed sweep.

Every run has its own weights, but all runs are one program: the weights of ``R`` GPTs
are stacked along a new first dimension (``torch.func.stack_module_state``), the forward
pass is ``torch.func.vmap`` of one GPT over that dimension, and one ``backward()`` of
the summed losses gives every run its own gradient (a run's loss depends on its own
weights only). The optimizer and the clipping rules are written on the stacked tensors:

* AdamW exactly as ``torch.optim.AdamW`` computes it, with a peak learning rate per run
  and the warm-up + cosine schedule of :func:`~clipping_lib.lab.schedules.warmup_cosine`;
* per run, one clipping method of :data:`METHODS`: ``"none"``; ``"clip 1.0"``
  (``clip_grad_norm_(..., 1.0)``); ``"zclip"`` and ``"autoclip"``, the rules of
  :class:`~clipping_lib.adaptive.ZClip` and :class:`~clipping_lib.adaptive.AutoClip`;
  ``"skip"``, the rule of :class:`~clipping_lib.skip_step.SkipStep` (a skipped step
  leaves the weights and both moments untouched).

Runs with the same seed start from the same weights and see the same batches.
:func:`train_runs` equals one-at-a-time training with ``torch.optim.AdamW`` and the
library's clippers up to float rounding (``tests/test_sweep.py`` checks it).
"""

from __future__ import annotations

import ast
import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, GPTConfig
from clipping_lib.lab.schedules import warmup_cosine
from clipping_lib.lab.threads import single_thread
from clipping_lib.skip_step import skip_decision

__all__ = [
    "METHODS",
    "SWEEP_CONFIG",
    "SWEEP_LRS",
    "SWEEP_PATH",
    "SWEEP_SEEDS",
    "SweepConfig",
    "SweepResult",
    "build_sweep",
    "corrupt",
    "load_sweep",
    "train_runs",
]

METHODS = ("none", "clip 1.0", "zclip", "autoclip", "skip")
CLIP_EPS = 1e-6  # clip_grad_norm_'s eps


@dataclass(frozen=True)
class SweepConfig:
    """Model, data and optimizer of every run of a sweep (all but lr, method and seed)."""

    width: int = 32
    layers: int = 2
    heads: int = 4
    context: int = 32
    batch_size: int = 8
    steps: int = 200
    warmup: int = 20
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    eps: float = 1e-8
    max_norm: float = 1.0
    zclip: tuple[float, float, int] = (0.97, 2.5, 25)  # alpha, z_thresh, warmup_steps
    autoclip_percentile: float = 10.0
    skip: tuple[int, float, int] = (50, 6.0, 25)  # window, sigma, min_history
    corrupt_steps: tuple[int, ...] = ()  # steps whose targets are all the last vocab character
    eval_batches: int = 8

    def gpt(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size, self.context, self.width, self.layers, self.heads)


@dataclass
class SweepResult:
    """Per run (rows): its settings, and per step: loss, gradient norm, clipped or skipped."""

    config: SweepConfig
    lr: np.ndarray  # (R,) peak learning rates
    method: np.ndarray  # (R,) method names
    seed: np.ndarray  # (R,)
    loss: np.ndarray  # (R, steps) training loss before the update
    grad_norm: np.ndarray  # (R, steps) global gradient norm before clipping
    clipped: np.ndarray  # (R, steps) bool: the gradient was scaled down or the step skipped
    val_loss: np.ndarray  # (R,) validation loss after training (inf if the run diverged)
    meta: dict = field(default_factory=dict)

    def select(self, lr: float, method: str, seed: int) -> int:
        """The row of the run with these settings."""
        rows = np.flatnonzero(
            np.isclose(self.lr, lr) & (self.method == method) & (self.seed == seed)
        )
        if len(rows) != 1:
            raise ValueError(f"no run with lr={lr!r}, method={method!r}, seed={seed!r}")
        return int(rows[0])

    def final(self) -> np.ndarray:
        """Validation loss per (lr, method, seed) as an array ``(lrs, methods, seeds)``."""
        lrs, methods, seeds = (
            np.unique(self.lr),
            list(dict.fromkeys(self.method)),
            np.unique(self.seed),
        )
        table = np.full((len(lrs), len(methods), len(seeds)), np.nan)
        for i, lr in enumerate(lrs):
            for j, method in enumerate(methods):
                for k, seed in enumerate(seeds):
                    table[i, j, k] = self.val_loss[self.select(lr, method, seed)]
        return table

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path, lr=self.lr, method=self.method, seed=self.seed, loss=self.loss.astype(np.float32),
            grad_norm=self.grad_norm.astype(np.float32), clipped=self.clipped,
            val_loss=self.val_loss, config=np.array(repr(asdict(self.config))),
        )  # fmt: skip


def load_sweep(path: str | Path) -> SweepResult:
    """A :class:`SweepResult` saved by :meth:`SweepResult.save`."""
    with np.load(path) as data:
        config = SweepConfig(**ast.literal_eval(str(data["config"])))  # a dict literal
        return SweepResult(
            config, data["lr"], data["method"].astype(str), data["seed"],
            data["loss"].astype(np.float64), data["grad_norm"].astype(np.float64),
            data["clipped"], data["val_loss"],
        )  # fmt: skip


def corrupt(targets: Tensor, steps: Sequence[int], token: int) -> Tensor:
    """Targets ``(steps, B, T)`` with those of the listed steps replaced by one repeated
    character ``token``: a degenerate batch (a file of one repeated byte, a padding bug)."""
    targets = targets.clone()
    for step in steps:
        if step < len(targets):
            targets[step] = token
    return targets


def _per_run_loss(model: GPT):
    def loss(params: dict, buffers: dict, ids: Tensor, targets: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (ids,))
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten())

    return vmap(loss)


@torch.no_grad()
def _clip_scales(
    method_ids: Tensor, norm: Tensor, loss: Tensor, step: int, state: dict, cfg: SweepConfig
) -> tuple[Tensor, Tensor]:
    """Per run: the factor that scales the gradient, and whether the method acted."""
    ones = torch.ones_like(norm)
    state["norms"][:, step] = norm
    state["losses"][:, step] = loss
    # fixed threshold, as clip_grad_norm_
    fixed = torch.clamp(cfg.max_norm / (norm + CLIP_EPS), max=1.0)
    # ZClip: warm-up statistics, then EMA of the clipped norm
    alpha, z_thresh, z_warmup = cfg.zclip
    if step + 1 < z_warmup:
        zscale, zclipped = ones, torch.zeros_like(norm, dtype=torch.bool)
    elif step + 1 == z_warmup:
        history = state["norms"][:, : step + 1]
        state["z_mean"], state["z_var"] = history.mean(1), history.var(1, correction=0)
        zscale, zclipped = ones, torch.zeros_like(norm, dtype=torch.bool)
    else:
        std = state["z_var"].sqrt()
        z = (norm - state["z_mean"]) / (std + CLIP_EPS)
        zclipped = z > z_thresh
        target = torch.where(zclipped, state["z_mean"] + z_thresh**2 / z * std, norm)
        zscale = torch.where(zclipped, target / (norm + 1e-6), 1.0)
        state["z_mean"] = alpha * state["z_mean"] + (1 - alpha) * target
        state["z_var"] = alpha * state["z_var"] + (1 - alpha) * (target - state["z_mean"]) ** 2
    # AutoClip: the percentile of every norm so far, this one included
    threshold = torch.quantile(state["norms"][:, : step + 1], cfg.autoclip_percentile / 100, dim=1)
    auto = torch.clamp(threshold / (norm + CLIP_EPS), max=1.0)
    # skip-step: z-score of loss and norm against the previous `window` steps
    window, sigma, min_history = cfg.skip
    if step + 1 < min_history:
        skip = torch.zeros_like(norm, dtype=torch.bool)
    else:
        start = max(0, step - window)
        skip = skip_decision(
            state["losses"][:, start:step], state["norms"][:, start:step], loss, norm, sigma
        )
    scales = torch.stack([ones, fixed, zscale, auto, torch.where(skip, 0.0, 1.0)])
    acted = torch.stack([~ones.bool(), norm > cfg.max_norm, zclipped, norm > threshold, skip])
    rows = torch.arange(len(norm))
    return scales[method_ids, rows], acted[method_ids, rows]


def train_runs(
    corpus: CharCorpus,
    config: SweepConfig,
    lrs: Sequence[float],
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0,),
    *,
    stop_after: int | None = None,
) -> SweepResult:
    """Train every (lr, method, seed) combination at once; see the module docstring.

    ``stop_after`` ends all runs after that many steps (the schedule stays the one of
    ``config.steps``), for tests that check the first steps of a sweep.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods must be among {METHODS}, got {unknown}")
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs must be finite numbers > 0, got {lrs!r}")
    steps = config.steps if stop_after is None else min(stop_after, config.steps)
    runs = list(itertools.product(lrs, methods, seeds))
    run_lr = torch.tensor([r[0] for r in runs], dtype=torch.float32)
    run_method = torch.tensor([METHODS.index(r[1]) for r in runs])
    seed_list = list(dict.fromkeys(seeds))
    run_seed = torch.tensor([seed_list.index(r[2]) for r in runs])
    gpt_config = config.gpt(corpus.vocab_size)
    models = [GPT(gpt_config, seed=seed) for seed in seed_list]
    params, buffers = stack_module_state([models[i] for i in run_seed.tolist()])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    template = copy.deepcopy(models[0]).to("meta")
    per_run_loss = _per_run_loss(template)
    data = [
        corpus.batches(config.steps, config.batch_size, config.context, seed=s) for s in seed_list
    ]
    ids = torch.stack([d[0] for d in data])[run_seed]  # (R, steps, B, T)
    targets = torch.stack(
        [corrupt(d[1], config.corrupt_steps, corpus.vocab_size - 1) for d in data]
    )[run_seed]
    schedule = warmup_cosine(config.steps, config.warmup)
    beta1, beta2 = config.betas
    R = len(runs)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(p) for k, p in params.items()}
    taken = torch.zeros(R)
    state = {"norms": torch.zeros(R, steps), "losses": torch.zeros(R, steps)}
    losses, norms, acted = (
        torch.zeros(R, steps),
        torch.zeros(R, steps),
        torch.zeros(R, steps, dtype=torch.bool),
    )
    alive = torch.ones(R, dtype=torch.bool)

    def shaped(x: Tensor, like: Tensor) -> Tensor:
        return x.view(-1, *([1] * (like.ndim - 1)))

    with single_thread():
        for step in range(steps):
            for p in params.values():
                p.grad = None
            loss = per_run_loss(params, buffers, ids[:, step], targets[:, step])
            loss.sum().backward()
            with torch.no_grad():
                grads = {k: p.grad for k, p in params.items()}
                norm = (
                    torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
                )
                loss = loss.detach()
                alive &= torch.isfinite(loss) & torch.isfinite(norm)
                scale, did = _clip_scales(
                    run_method,
                    torch.nan_to_num(norm, nan=0.0, posinf=0.0),
                    torch.nan_to_num(loss),
                    step,
                    state,
                    config,
                )
                losses[:, step], norms[:, step], acted[:, step] = loss, norm, did
                factor = torch.where(did & (run_method == METHODS.index("skip")), 0.0, 1.0) * alive
                taken += factor
                lr = run_lr * schedule(step)
                bias1 = 1 - beta1 ** taken.clamp(min=1)
                bias2_sqrt = (1 - beta2 ** taken.clamp(min=1)).sqrt()
                for k, p in params.items():
                    g = grads[k] * shaped(scale, p)
                    f = shaped(factor, p)
                    p.mul_(1 - f * shaped(lr, p) * config.weight_decay)
                    m[k].lerp_(g, f * (1 - beta1))
                    v[k].mul_(1 - f * (1 - beta2)).add_(f * (1 - beta2) * g * g)
                    denom = v[k].sqrt() / shaped(bias2_sqrt, p) + config.eps
                    p.sub_(f * shaped(lr / bias1, p) * m[k] / denom)
        with torch.no_grad():
            val_ids, val_targets = corpus.batches(
                config.eval_batches, config.batch_size, config.context, seed=10_000, split="val"
            )
            val = torch.stack([
                per_run_loss(params, buffers, val_ids[i].expand(R, -1, -1),
                             val_targets[i].expand(R, -1, -1))
                for i in range(config.eval_batches)
            ]).mean(0)  # fmt: skip
            val = torch.where(alive & torch.isfinite(val), val, torch.inf)
    return SweepResult(
        config,
        np.array([r[0] for r in runs], dtype=np.float64),
        np.array([r[1] for r in runs]),
        np.array([r[2] for r in runs]),
        losses.double().numpy(),
        norms.double().numpy(),
        acted.numpy(),
        val.double().numpy(),
    )


# The course's sweep (notebook 09): cached in SWEEP_PATH because it takes minutes; rebuild
# it with build_sweep() after changing any of these.
SWEEP_CONFIG = SweepConfig(steps=150, warmup=15, corrupt_steps=(40, 55, 70, 85, 100, 115))
SWEEP_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
SWEEP_SEEDS = (0, 1, 2)
SWEEP_PATH = Path(__file__).parent / "data" / "modern_sweep.npz"


def build_sweep(path: str | Path = SWEEP_PATH) -> SweepResult:
    """Train the course's sweep (every lr x method x seed) and save it to ``path``."""
    result = train_runs(CharCorpus.torch_source(), SWEEP_CONFIG, SWEEP_LRS, METHODS, SWEEP_SEEDS)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    result.save(path)
    return result

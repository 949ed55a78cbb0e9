r"""Many tiny-GPT training runs at once: a learning-rate x clipping-method x seed sweep.

Every run has its own weights, but all runs are one program: the weights of ``R`` GPTs
are stacked along a new first dimension (``torch.func.stack_module_state``), the forward
pass is ``torch.func.vmap`` of one GPT over that dimension, and one ``backward()`` of
the summed losses gives every run its own gradient (a run's loss depends on its own
weights only). The optimizer and the clipping rules are written on the stacked tensors:

* AdamW exactly as ``torch.optim.AdamW`` computes it, with a peak learning rate per run
  and the warm-up + cosine schedule of :func:`~clipping_lib.lab.schedules.warmup_cosine`;
  and weight decay on the weight matrices and embeddings only (the parameters with two or
  more dimensions), as nanoGPT's ``configure_optimizers`` groups them;
* per run, one clipping method of :data:`METHODS`: ``"none"``; ``"clip 1.0"``
  (``clip_grad_norm_(..., 1.0)``); ``"zclip"``, the rule of
  :class:`~clipping_lib.adaptive.ZClip` alone; ``"zclip + max 1.0"``, the same rule with
  the ZClip authors' default ``max_grad_norm=1.0`` on top (their ``zclip.py``: during
  its warm-up ``clip_grad_norm_(..., 1.0)``; after it, the gradient is clipped to
  :math:`\min(g^\star_t, 1)`, while the statistics still move towards :math:`g^\star_t`);
  ``"autoclip"``, the rule of :class:`~clipping_lib.adaptive.AutoClip`; ``"skip"``, the
  rule of :class:`~clipping_lib.skip_step.SkipStep` (a skipped step leaves the weights
  and both moments untouched);
* or one of the two spike-free references, the corrupted batches replaced by the clean
  ones: :data:`CLEAN` (no clipping), so the gap to ``"none"`` is what the spikes cost, and
  :data:`CLEAN_CLIP` (``clip_grad_norm_(..., 1.0)``), so the gap between the two
  references is what clipping does when there is no spike to clip.

Runs with the same seed start from the same weights and see the same batches (the clean
reference sees them uncorrupted).
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
from clipping_lib.skip_step import olmo_skip_decision

__all__ = [
    "CLEAN",
    "CLEAN_CLIP",
    "METHODS",
    "REFERENCES",
    "SWEEP_CONFIG",
    "SWEEP_LRS",
    "SWEEP_PATH",
    "SWEEP_SEEDS",
    "SweepConfig",
    "SweepResult",
    "build_sweep",
    "corrupt",
    "load_sweep",
    "sweep_report",
    "sweep_verdicts",
    "train_runs",
]

METHODS = ("none", "clip 1.0", "zclip", "zclip + max 1.0", "autoclip", "skip")
CLEAN = "no spikes"  # a reference run: no corrupted batch, no clipping
CLEAN_CLIP = "no spikes, clip 1.0"  # a reference run: no corrupted batch, clip_grad_norm_ 1.0
REFERENCES = (CLEAN, CLEAN_CLIP)
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
    zclip_max_norm: float = 1.0  # the ZClip authors' default max_grad_norm, for "zclip + max"
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

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods of the runs, in the order they were trained (references first)."""
        return tuple(str(m) for m in dict.fromkeys(self.method))

    def final(self) -> np.ndarray:
        """Validation loss per (lr, method, seed) as an array ``(lrs, methods, seeds)``,
        methods in the order of :attr:`methods`."""
        lrs, methods, seeds = np.unique(self.lr), self.methods, np.unique(self.seed)
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
    # ZClip with the authors' max_grad_norm: clip_grad_norm_ in its warm-up, then min(g*, max)
    cap = cfg.zclip_max_norm
    if step + 1 <= z_warmup:
        zmax_scale = torch.clamp(cap / (norm + CLIP_EPS), max=1.0)
        zmax_clipped = norm > cap
    else:
        effective = torch.clamp(torch.where(zclipped, target, norm), max=cap)
        zmax_clipped = norm > effective
        zmax_scale = torch.where(zmax_clipped, effective / (norm + 1e-6), 1.0)
    # AutoClip: the percentile of every norm so far, this one included
    threshold = torch.quantile(state["norms"][:, : step + 1], cfg.autoclip_percentile / 100, dim=1)
    auto = torch.clamp(threshold / (norm + CLIP_EPS), max=1.0)
    # skip-step (OLMo-core): loss or norm more than sigma std above the previous `window` steps
    window, sigma, min_history = cfg.skip
    if step + 1 < min_history:
        skip = torch.zeros_like(norm, dtype=torch.bool)
    else:
        start = max(0, step - window)
        skip = olmo_skip_decision(
            state["losses"][:, start:step], state["norms"][:, start:step], loss, norm, sigma
        )
    none = ~ones.bool()
    clip = norm > cfg.max_norm
    skip_scale = torch.where(skip, 0.0, 1.0)
    # rows: METHODS, then REFERENCES (CLEAN: none, CLEAN_CLIP: fixed)
    scales = torch.stack([ones, fixed, zscale, zmax_scale, auto, skip_scale, ones, fixed])
    acted = torch.stack([none, clip, zclipped, zmax_clipped, norm > threshold, skip, none, clip])
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
    kinds = (*METHODS, *REFERENCES)
    unknown = [m for m in methods if m not in kinds]
    if unknown:
        raise ValueError(f"methods must be among {kinds}, got {unknown}")
    if not lrs or any(not (math.isfinite(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs must be finite numbers > 0, got {lrs!r}")
    steps = config.steps if stop_after is None else min(stop_after, config.steps)
    runs = list(itertools.product(lrs, methods, seeds))
    run_lr = torch.tensor([r[0] for r in runs], dtype=torch.float32)
    run_method = torch.tensor([kinds.index(r[1]) for r in runs])
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
    corrupted = torch.stack(
        [corrupt(d[1], config.corrupt_steps, corpus.vocab_size - 1) for d in data]
    )[run_seed]
    clean = (run_method >= len(METHODS)).view(-1, 1, 1, 1)  # the references
    targets = torch.where(clean, torch.stack([d[1] for d in data])[run_seed], corrupted)
    # nanoGPT's groups: decay the tensors with >= 2 dimensions (one more here: the run axis)
    decay = {k: config.weight_decay if p.ndim >= 3 else 0.0 for k, p in params.items()}
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
                    p.mul_(1 - f * shaped(lr, p) * decay[k])
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
SWEEP_LRS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SWEEP_SEEDS = (0, 1, 2, 3, 4)
SWEEP_PATH = Path(__file__).parent / "data" / "modern_sweep.npz"


def build_sweep(path: str | Path = SWEEP_PATH) -> SweepResult:
    """Train the course's sweep (every lr x (clean reference, methods) x seed) and save it."""
    result = train_runs(
        CharCorpus.torch_source(), SWEEP_CONFIG, SWEEP_LRS, (*REFERENCES, *METHODS), SWEEP_SEEDS
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    result.save(path)
    return result


def _column(result: SweepResult, method: str) -> int:
    if method not in result.methods:
        raise ValueError(f"method must be one of {result.methods}, got {method!r}")
    return result.methods.index(method)


def _gain(table: np.ndarray, result: SweepResult, i: int, base: str, method: str) -> np.ndarray:
    """Per seed at learning rate ``i``: how much lower ``method`` ends than ``base``."""
    return table[i, _column(result, base)] - table[i, _column(result, method)]


def sweep_report(result: SweepResult, baseline: float | None = None) -> str:
    """Two tables from the stored runs, one column per learning rate.

    First the mean validation loss over seeds of every setting (references included); then
    the *paired* gain over no clipping, :math:`L_{none} - L_{method}` on the same seed (same
    start, same batches), as its mean and the number of seeds on which it is positive.
    """
    table, lrs = result.final(), np.unique(result.lr)
    seeds = table.shape[2]
    width = max(len(m) for m in result.methods) + 1
    head = f"{'lr':>{width}s} " + "".join(f"{lr:>12g}" for lr in lrs)
    note = "" if baseline is None else f" (unigram baseline {baseline:.3f})"
    lines = [f"validation loss after {result.loss.shape[1]} steps, mean over {seeds} seeds"
             f"{note}:", head]  # fmt: skip
    for j, method in enumerate(result.methods):
        lines.append(f"{method:<{width}s} " + "".join(f"{v:12.3f}" for v in table[:, j].mean(1)))
    spread = np.ptp(table, axis=2).max()
    lines.append(f"(the largest range over seeds of any entry: {spread:.3f})")
    lines += ["", f"gain over no clipping on the same seed: mean, and on how many of {seeds} "
              "seeds it is positive:", head]  # fmt: skip
    for method in (m for m in result.methods if m in METHODS and m != "none"):
        gains = [_gain(table, result, i, "none", method) for i in range(len(lrs))]
        lines.append(f"{method:<{width}s} " + "".join(
            f"{g.mean():+8.3f} {np.sum(g > 0)}/{seeds}" for g in gains))  # fmt: skip
    return "\n".join(lines)


def sweep_verdicts(result: SweepResult, baseline: float | None = None) -> list[str]:
    """Verdicts read off the numbers of :func:`sweep_report`, one line per claim.

    * where each setting's best learning rate (lowest mean) lies, and whether the sweep
      brackets it (not at either end);
    * per learning rate: what the spikes cost (``"none"`` against :data:`CLEAN`, paired),
      and what they cost under ``"clip 1.0"`` (against :data:`CLEAN_CLIP`); what
      ``"clip 1.0"`` gains without spikes (:data:`CLEAN_CLIP` against :data:`CLEAN`), the
      part of its gain that is not about spikes; the methods that end below no
      clipping on *every* seed; the largest mean gain, the methods tied with it (the same
      loss on every seed) and on how many seeds it beats the next one; the smallest gain;
      with ``baseline``, the settings that end 0.1 below it on every seed.
    """
    table, lrs = result.final(), np.unique(result.lr)
    seeds = table.shape[2]
    methods = [m for m in METHODS if m in result.methods and m != "none"]
    best = {m: lrs[int(np.argmin(table[:, j].mean(1)))] for j, m in enumerate(result.methods)}
    edge = [m for m, lr in best.items() if lr in (lrs[0], lrs[-1])]
    lines = ["best learning rate (lowest mean): " + ", ".join(
        f"{m} {lr:g}" for m, lr in best.items()) + (
        "; every optimum lies inside the sweep" if not edge
        else f"; at the sweep's edge for {', '.join(edge)}")]  # fmt: skip
    largest, smallest = [], []
    for i, lr in enumerate(lrs):
        parts = []
        if CLEAN in result.methods:
            cost = -_gain(table, result, i, CLEAN, "none")
            parts.append(f"the spikes cost {cost.mean():+.3f} (no clipping; {np.sum(cost > 0)}"
                         f"/{seeds} seeds)")  # fmt: skip
            if CLEAN_CLIP in result.methods and "clip 1.0" in result.methods:
                clipped = -_gain(table, result, i, CLEAN_CLIP, "clip 1.0")
                alone = _gain(table, result, i, CLEAN, CLEAN_CLIP)
                worse = np.sum(clipped > 0)
                parts[-1] += (f", with clip 1.0 {clipped.mean():+.3f} ({worse}/{seeds}); "
                              f"without spikes, clip 1.0 gains {alone.mean():+.3f}")  # fmt: skip
        gains = {m: _gain(table, result, i, "none", m) for m in methods}
        every = [m for m in methods if np.all(gains[m] > 0)]
        parts.append("below no clipping on every seed: " + (", ".join(every) or "no method"))
        order = sorted(methods, key=lambda m: -gains[m].mean())
        top = order[0]
        tied = [m for m in order[1:] if np.allclose(gains[m], gains[top], rtol=0, atol=1e-6)]
        rest = [m for m in order[1:] if m not in tied]
        lead = gains[top] - gains[rest[0]]
        largest.append(top)
        smallest.append(order[-1])
        parts.append(f"largest gain {top} {gains[top].mean():+.3f}"
                     + (f" (tied on every seed with {', '.join(tied)})" if tied else "")
                     + f", ahead of {rest[0]} on {np.sum(lead > 0)}/{seeds} seeds; smallest "
                     f"{order[-1]} {gains[order[-1]].mean():+.3f}")  # fmt: skip
        if baseline is not None:
            learns = [m for j, m in enumerate(result.methods)
                      if np.all(table[i, j] < baseline - 0.1)]  # fmt: skip
            named = "all" if len(learns) == len(result.methods) else ", ".join(learns) or "none"
            parts.append(f"0.1 below the unigram baseline on every seed: {named}")
        lines.append(f"lr {lr:g}:")
        lines += [f"  {part}" for part in parts]
    counts = [(m, largest.count(m), smallest.count(m)) for m in methods]
    lines.append("over the learning rates, largest gain: " + ", ".join(
        f"{m} {n}x" for m, n, _ in counts if n) + "; smallest gain: " + ", ".join(
        f"{m} {k}x" for m, _, k in counts if k))  # fmt: skip
    if {"zclip", "zclip + max 1.0"} <= set(result.methods):
        a, b = _column(result, "zclip + max 1.0"), _column(result, "zclip")
        with_max = lrs[np.all(table[:, a] < table[:, b], axis=-1)]
        alone = lrs[np.all(table[:, b] < table[:, a], axis=-1)]
        lines.append(f"ZClip with the authors' max_grad_norm=1.0 ends below ZClip alone on every "
                     f"seed at lr {_lrs(with_max)}; alone below it on every seed at lr "
                     f"{_lrs(alone)}")  # fmt: skip
    return lines


def _lrs(values: np.ndarray) -> str:
    return ", ".join(f"{v:g}" for v in values) if len(values) else "none"

r"""Where gradient-norm and loss spikes come from, reproduced one mechanism at a time on the
tiny GPT of notebook 09 (:mod:`clipping_lib.lab.gpt`).

One training loop, :func:`train_probe`, with one switch per mechanism:

* **bad data** (``corrupt_steps``): the targets of a batch replaced by one repeated
  character, as :func:`clipping_lib.lab.sweep.corrupt` does for notebook 09;
* **Adam's second-moment collapse** (``quiet``): for a stretch of steps every gradient is
  multiplied by a small factor :math:`q`, so Adam's :math:`v` decays by :math:`\beta_2`
  per step towards :math:`q^2 g^2`; the first ordinary gradient after the stretch is then
  divided by a collapsed :math:`\sqrt{\hat v}`;
* **attention-logit growth** (a high ``lr``), with its fixes ``qk_norm`` (LayerNorm on
  queries and keys, per head) and ``z_loss`` (:math:`+\,c\,\overline{(\log Z)^2}`, the
  squared log-partition function of the output softmax, averaged over tokens);
* **the late rise of the norm** (``weight_decay`` and the schedule), with the correction
  ``decay="lr2"``: the decay of each step multiplied by :math:`\eta_t^2/\eta_{max}` instead
  of :math:`\eta_t`.

The optimizer is AdamW written out (:func:`adamw_step`, equal to ``torch.optim.AdamW``
with its defaults up to float rounding: ``tests/test_spike_mechanisms.py`` checks it) so
that two update-size guards can be switched on: ``update_clip`` (Adafactor's rule, the
update :math:`u = \hat m/(\sqrt{\hat v}+\epsilon)` of each tensor divided by
:math:`\max(1, \mathrm{RMS}(u)/d)`) and gradient clipping ``max_norm`` (before the step,
as ``clip_grad_norm_``). Every step records the loss, the gradient norm before clipping,
the update norm :math:`\lVert\theta_{t+1}-\theta_t\rVert`, the largest attention logit
and the mean :math:`\log Z`, with no host sync inside the loop.

:func:`newton_schulz_probe` and :func:`train_muon` put ``torch.optim.Muon`` (the 2-D
weights of the blocks) beside AdamW (the rest) and compare where the clip goes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from clipping_lib._checks import check_int
from clipping_lib.lab.corpus import CharCorpus
from clipping_lib.lab.gpt import GPT, CausalSelfAttention, GPTConfig
from clipping_lib.lab.schedules import warmup_cosine
from clipping_lib.lab.sweep import corrupt
from clipping_lib.lab.threads import single_thread
from clipping_lib.monitor import LayerMonitor

__all__ = [
    "PROBE_CONFIG",
    "SPIKES_PATH",
    "ProbeTrace",
    "ProbedAttention",
    "adamw_step",
    "build_spike_data",
    "collapse_bound",
    "load_spike_data",
    "muon_groups",
    "newton_schulz_probe",
    "probed_gpt",
    "signature",
    "train_muon",
    "train_probe",
    "update_rms_clip",
]


class ProbedAttention(CausalSelfAttention):
    """Causal self-attention that keeps its largest logit, optionally with qk-layernorm.

    ``qk_norm=True`` applies a LayerNorm over each head's dimension to the queries and
    to the keys before their dot product (Dehghani et al., 2023), so every logit is
    bounded by :math:`\\lVert\\gamma_q\\rVert\\lVert\\gamma_k\\rVert/\\sqrt{d}` whatever the
    weights. :attr:`max_logit` holds the largest :math:`|q\\cdot k|/\\sqrt d` of the last
    forward pass, as a tensor (reading it is the caller's choice of when to sync).
    """

    def __init__(self, config: GPTConfig, qk_norm: bool = False) -> None:
        super().__init__(config)
        head = config.width // config.heads
        self.q_norm = nn.LayerNorm(head) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head) if qk_norm else nn.Identity()
        self.max_logit = torch.zeros(())

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        self.max_logit = scores.detach().abs().amax()
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        y = scores.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, C))


def probed_gpt(config: GPTConfig, seed: int = 0, qk_norm: bool = False) -> GPT:
    """``GPT(config, seed=seed)`` with :class:`ProbedAttention` in every block: the same
    initial weights as the plain GPT (the qk-layernorm gains start at one)."""
    model = GPT(config, seed=seed)
    for block in model.blocks:
        probed = ProbedAttention(config, qk_norm)
        probed.qkv.load_state_dict(block.attn.qkv.state_dict())
        probed.out.load_state_dict(block.attn.out.state_dict())
        block.attn = probed
    return model


def update_rms_clip(update: Tensor, d: float = 1.0) -> Tensor:
    r"""Adafactor's update clipping of one tensor: :math:`u / \max(1, \mathrm{RMS}(u)/d)`,
    with :math:`\mathrm{RMS}(u) = \sqrt{\operatorname{mean}(u^2)}` (a new tensor)."""
    if not isinstance(update, Tensor):
        raise TypeError(f"update must be a Tensor, got {type(update).__name__}")
    if not d > 0:
        raise ValueError(f"d must be > 0, got {d!r}")
    rms = update.pow(2).mean().sqrt()
    return update / torch.clamp(rms / d, min=1.0)


def collapse_bound(beta1: float, beta2: float) -> float:
    r"""The per-coordinate size of Adam's update, in units of the learning rate, for the
    first gradient after :math:`v` and :math:`m` have decayed to zero (bias correction
    complete): :math:`\hat m/\sqrt{\hat v} = (1-\beta_1)g/\sqrt{(1-\beta_2)g^2} =
    (1-\beta_1)/\sqrt{1-\beta_2}`, whatever the size of :math:`g`."""
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"beta1 and beta2 must be in [0, 1), got {beta1!r}, {beta2!r}")
    return (1 - beta1) / math.sqrt(1 - beta2)


@torch.no_grad()
def adamw_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    state: dict,
    *,
    lr: float,
    decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    update_clip: float | None = None,
) -> None:
    r"""One AdamW step in place: :math:`\theta \leftarrow \theta(1-\text{decay}) -
    \eta\,u`, :math:`u = \hat m/(\sqrt{\hat v}+\epsilon)`, optionally
    :math:`u \leftarrow` :func:`update_rms_clip` ``(u, update_clip)`` per tensor.

    ``decay`` is the whole multiplicative decay of this step (``lr * weight_decay`` for
    torch's AdamW). ``state`` starts as ``{}`` and holds ``m``, ``v`` and ``step``.
    """
    beta1, beta2 = betas
    if not state:
        state.update(m=[torch.zeros_like(p) for p in params],
                     v=[torch.zeros_like(p) for p in params], step=0)  # fmt: skip
    state["step"] += 1
    bias1 = 1 - beta1 ** state["step"]
    bias2_sqrt = math.sqrt(1 - beta2 ** state["step"])
    for p, g, m, v in zip(params, grads, state["m"], state["v"], strict=True):
        p.mul_(1 - decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        u = (m / bias1) / (v.sqrt() / bias2_sqrt + eps)
        if update_clip is not None:
            u = update_rms_clip(u, update_clip)
        p.sub_(lr * u)


@dataclass
class ProbeTrace:
    """Per step (NumPy): loss before the update, gradient norm before clipping, update
    norm, largest attention logit, mean log Z of the output softmax, weight norm."""

    loss: np.ndarray
    grad_norm: np.ndarray
    update_norm: np.ndarray
    max_logit: np.ndarray
    log_z: np.ndarray
    weight_norm: np.ndarray
    val_loss: float
    meta: dict = field(default_factory=dict)

    FIELDS = ("loss", "grad_norm", "update_norm", "max_logit", "log_z", "weight_norm")

    def stacked(self) -> np.ndarray:
        return np.stack([getattr(self, f) for f in self.FIELDS])


def signature(trace: ProbeTrace, step: int, before: slice | None = None) -> dict[str, float]:
    """The gradient norm, the loss and the update norm at ``step``, each in units of its
    median over ``before`` (default: the 20 steps before ``step``; NaN steps skipped):
    the three numbers that tell one kind of spike from another."""
    before = slice(max(0, step - 20), step) if before is None else before
    return {
        name: float(getattr(trace, name)[step] / np.nanmedian(getattr(trace, name)[before]))
        for name in ("grad_norm", "loss", "update_norm")
    }


def _loss_and_logz(model: GPT, ids: Tensor, targets: Tensor, z_loss: float):
    logits = model(ids).flatten(0, -2)
    log_z = torch.logsumexp(logits, dim=-1)
    loss = F.cross_entropy(logits, targets.flatten())
    total = loss + z_loss * log_z.pow(2).mean() if z_loss else loss
    return total, loss, log_z.mean()


def train_probe(
    corpus: CharCorpus,
    config: GPTConfig,
    *,
    steps: int,
    lr: float,
    warmup: int = 10,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: str = "lr",
    batch_size: int = 8,
    seed: int = 0,
    max_norm: float | None = None,
    update_clip: float | None = None,
    qk_norm: bool = False,
    z_loss: float = 0.0,
    corrupt_steps: Sequence[int] = (),
    quiet: tuple[int, int, float] | None = None,
    min_ratio: float = 0.1,
    layers: bool = False,
) -> ProbeTrace:
    """Train ``probed_gpt(config, seed, qk_norm)`` and record every step; see the module
    docstring for what each switch reproduces.

    ``quiet = (start, stop, q)`` multiplies every gradient of steps ``start..stop-1`` by
    ``q``. ``decay="lr"`` is AdamW's decay ``lr_t * weight_decay``; ``decay="lr2"`` the
    corrected ``lr_t**2 / lr * weight_decay``. ``layers=True`` also records per-layer
    gradient norms (after clipping) and update ratios with a
    :class:`clipping_lib.monitor.LayerMonitor`, returned as ``trace.meta["layers"]``.
    """
    steps = check_int(steps, "steps", 1)
    if decay not in ("lr", "lr2"):
        raise ValueError(f"decay must be 'lr' or 'lr2', got {decay!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    model = probed_gpt(config, seed, qk_norm)
    params = list(model.parameters())
    monitor = LayerMonitor(model.named_parameters(), capacity=steps) if layers else None
    attentions = [block.attn for block in model.blocks]
    ids, targets = corpus.batches(steps, batch_size, config.context, seed=seed)
    targets = corrupt(targets, corrupt_steps, corpus.vocab_size - 1)
    schedule = warmup_cosine(steps, warmup, min_ratio)
    records = torch.zeros(len(ProbeTrace.FIELDS), steps)
    state: dict = {}
    with single_thread():
        for step in range(steps):
            for p in params:
                p.grad = None
            silent = quiet is not None and quiet[0] <= step < quiet[1]
            if silent and quiet[2] == 0:  # exact zeros: no forward or backward pass needed
                loss = log_z = torch.full((), float("nan"))
                grads = [torch.zeros_like(p) for p in params]
            else:
                total, loss, log_z = _loss_and_logz(model, ids[step], targets[step], z_loss)
                total.backward()
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            with torch.no_grad():
                if silent:
                    grads = [g * quiet[2] for g in grads]
                norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
                if max_norm is not None:
                    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
                    grads = [g * scale for g in grads]
                if monitor is not None:
                    for p, g in zip(params, grads, strict=True):
                        p.grad = g
                    monitor.record_grads()
                before = [p.clone() for p in params]
                lr_t = lr * schedule(step)
                step_decay = (lr_t if decay == "lr" else lr_t**2 / lr) * weight_decay
                adamw_step(params, grads, state, lr=lr_t, decay=step_decay, betas=betas,
                           eps=eps, update_clip=update_clip)  # fmt: skip
                if monitor is not None:
                    monitor.record_update(before)
                update = torch.stack([(p - b).norm() for p, b in zip(params, before, strict=True)])
                weight = torch.stack([p.norm() for p in params])
                logit = torch.stack([a.max_logit for a in attentions]).amax()
                records[:, step] = torch.stack([loss.detach(), norm, update.norm(), logit,
                                                log_z.detach(), weight.norm()])  # fmt: skip
        val = _validation(corpus, model, config, batch_size)
    meta = {"layers": monitor.history()} if monitor is not None else {}
    return ProbeTrace(*records.double().numpy(), val_loss=val, meta=meta)


@torch.no_grad()
def _validation(corpus: CharCorpus, model: nn.Module, config: GPTConfig, batch_size: int) -> float:
    val_ids, val_targets = corpus.batches(4, batch_size, config.context, seed=10_000, split="val")
    losses = torch.stack([model.loss(val_ids[i], val_targets[i]) for i in range(4)])
    value = float(losses.mean())
    return value if math.isfinite(value) else math.inf


# ---------------------------------------------------------------------------------------
# Muon beside AdamW


def muon_groups(model: GPT) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The blocks' 2-D weights (for Muon), and every other parameter (embeddings, head,
    biases, LayerNorm gains: for AdamW), the split ``torch.optim.Muon``'s docs show."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        (muon if p.ndim == 2 and name.startswith("blocks.") else adamw).append(p)
    return muon, adamw


@torch.no_grad()
def newton_schulz_probe(
    gradient: Tensor, coefficients: Sequence[float], *, lr: float = 0.02
) -> np.ndarray:
    """The norm of one ``torch.optim.Muon`` update of a weight whose gradient is
    ``c * gradient``, for each clip coefficient ``c`` in ``coefficients`` (no momentum
    history: a fresh optimizer per ``c``, zero weight decay)."""
    if not isinstance(gradient, Tensor) or gradient.ndim != 2:
        raise ValueError("gradient must be a 2-D Tensor")
    norms = []
    for c in coefficients:
        weight = nn.Parameter(torch.zeros_like(gradient))
        weight.grad = gradient * c
        torch.optim.Muon([weight], lr=lr, weight_decay=0.0).step()
        norms.append(float(weight.norm()))
    return np.array(norms)


def train_muon(
    corpus: CharCorpus,
    config: GPTConfig,
    *,
    clip: str,
    steps: int = 150,
    lr_muon: float = 0.02,
    lr_adamw: float = 3e-3,
    max_norm: float = 1.0,
    grad_scale: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
) -> ProbeTrace:
    """Train with ``torch.optim.Muon`` on :func:`muon_groups`' first group and
    ``torch.optim.AdamW`` on the second, clipping ``clip``: ``"none"``, ``"global"`` (one
    ``clip_grad_norm_`` over both groups, as Megatron's ChainedOptimizer does) or
    ``"adamw only"`` (the norm and the clip over the AdamW group alone).

    ``grad_scale`` multiplies the gradients of the AdamW group only: layers whose gradients
    are orders of magnitude larger than the rest (NVIDIA/Megatron-LM#5394 met a global norm
    of 5e7 from some layers). AdamW ignores a constant scale of its own gradients; the
    global clip coefficient then shrinks Muon's gradients too. The trace's
    ``update_norm`` is the Muon group's update only.
    """
    if clip not in ("none", "global", "adamw only"):
        raise ValueError(f"clip must be 'none', 'global' or 'adamw only', got {clip!r}")
    steps = check_int(steps, "steps", 1)
    model = probed_gpt(config, seed)
    muon, adamw = muon_groups(model)
    optimizers = [
        torch.optim.Muon(muon, lr=lr_muon, weight_decay=0.0),
        torch.optim.AdamW(adamw, lr=lr_adamw, betas=(0.9, 0.95), weight_decay=0.0),
    ]
    ids, targets = corpus.batches(steps, batch_size, config.context, seed=seed)
    records = torch.zeros(len(ProbeTrace.FIELDS), steps)
    attentions = [block.attn for block in model.blocks]
    with single_thread():
        for step in range(steps):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss = model.loss(ids[step], targets[step])
            loss.backward()
            with torch.no_grad():
                if grad_scale != 1.0:
                    torch._foreach_mul_([p.grad for p in adamw], grad_scale)
                norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in muon + adamw]))
                if clip == "global":
                    torch.nn.utils.clip_grad_norm_(muon + adamw, max_norm)
                elif clip == "adamw only":
                    torch.nn.utils.clip_grad_norm_(adamw, max_norm)
                before = [p.clone() for p in muon]
            for opt in optimizers:
                opt.step()
            with torch.no_grad():
                update = torch.stack([(p - b).norm() for p, b in zip(muon, before, strict=True)])
                weight = torch.stack([p.norm() for p in model.parameters()])
                logit = torch.stack([a.max_logit for a in attentions]).amax()
                records[:, step] = torch.stack([loss.detach(), norm, update.norm(), logit,
                                                torch.zeros(()), weight.norm()])  # fmt: skip
        val = _validation(corpus, model, config, batch_size)
    return ProbeTrace(*records.double().numpy(), val_loss=val)


# ---------------------------------------------------------------------------------------
# The cached runs of notebook 12

PROBE_CONFIG = dict(context=32, width=32, layers=2, heads=4)
SPIKES_PATH = Path(__file__).parent / "data" / "spike_mechanisms.npz"
LOGIT_LR = 0.3
LOGIT_VARIANTS = {
    "AdamW": {},
    "clip 1.0": {"max_norm": 1.0},
    "qk-layernorm": {"qk_norm": True},
    "z-loss 1e-4": {"z_loss": 1e-4},
}
LATE_VARIANTS = {
    "no weight decay": {"weight_decay": 0.0},
    "weight decay 1.0": {"weight_decay": 1.0},
    "weight decay 1.0, decay x lr_t / lr_max": {"weight_decay": 1.0, "decay": "lr2"},
}
MUON_VARIANTS = ("none", "global", "adamw only")
MUON_SCALES = (1.0, 1e12)  # 1e12: the AdamW group's gradients 1e12 times too large
QUIET = (100, 3100, 0.0)  # steps 100..3099: zero gradients (a stretch of already-fit data)
COLLAPSE_VARIANTS = {
    "beta2 0.999": {},
    "beta2 0.999, clip 0.1": {"max_norm": 0.1},
    "beta2 0.999, update clip 1.0": {"update_clip": 1.0},
    "beta2 0.999, eps 1e-4": {"eps": 1e-4},
    "beta2 0.95": {"betas": (0.9, 0.95)},
}
SEEDS = (0, 1, 2)


def _runs(corpus: CharCorpus) -> dict[str, dict]:
    """Every cached run's name and how to compute it (one place for the builder and tests)."""
    config = GPTConfig(corpus.vocab_size, **PROBE_CONFIG)
    runs: dict[str, dict] = {}
    for seed in SEEDS:
        for name, kw in LOGIT_VARIANTS.items():
            runs[f"logit/{name}/{seed}"] = dict(
                kind="probe", config=config, steps=200, lr=LOGIT_LR, warmup=20, seed=seed, **kw
            )
        for name, kw in LATE_VARIANTS.items():
            runs[f"late/{name}/{seed}"] = dict(
                kind="probe",
                config=config,
                steps=600,
                lr=0.01,
                warmup=30,
                seed=seed,
                min_ratio=0.0,
                **kw,
            )
        for name, kw in COLLAPSE_VARIANTS.items():
            if seed < 2:
                runs[f"collapse/{name}/{seed}"] = {
                    "kind": "probe", "config": config, "steps": QUIET[1] + 40, "lr": 3e-3,
                    "warmup": 10, "seed": seed, "quiet": QUIET, "min_ratio": 1.0,
                    "betas": (0.9, 0.999), **kw,
                }  # fmt: skip
        for scale in MUON_SCALES:
            for clip in MUON_VARIANTS:
                runs[f"muon/{clip}/x{scale:g}/{seed}"] = dict(
                    kind="muon", config=config, clip=clip, grad_scale=scale, seed=seed, steps=200
                )
    return runs


def run_cached(corpus: CharCorpus, spec: dict, **override) -> ProbeTrace:
    """Compute one run of :func:`build_spike_data` (``override`` changes its settings)."""
    spec = {**spec, **override}
    kind = spec.pop("kind")
    config = spec.pop("config")
    return (train_probe if kind == "probe" else train_muon)(corpus, config, **spec)


def build_spike_data(path: str | Path = SPIKES_PATH) -> dict[str, ProbeTrace]:
    """Train every cached run of notebook 12 (minutes) and save it to ``path``."""
    corpus = CharCorpus.torch_source()
    traces = {name: run_cached(corpus, spec) for name, spec in _runs(corpus).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}|curves": t.stacked().astype(np.float32) for name, t in traces.items()}
    arrays.update({f"{name}|val": np.array(t.val_loss) for name, t in traces.items()})
    np.savez_compressed(path, **arrays)
    return traces


def load_spike_data(path: str | Path = SPIKES_PATH) -> dict[str, ProbeTrace]:
    """The runs saved by :func:`build_spike_data`, by name (``"logit/qk-layernorm/0"``)."""
    traces = {}
    with np.load(path) as data:
        for key in data.files:
            name, what = key.rsplit("|", 1)
            if what == "curves":
                curves = data[key].astype(np.float64)
                traces[name] = ProbeTrace(*curves, val_loss=float(data[f"{name}|val"]))
    return traces

r"""Lesson 10's bench: one SGD step of each tool on one model and one batch.

Each ``*_step`` function trains lesson 08's MLP (or, for the Transformers ``Trainer``, a
tiny GPT-2 built from a config) for **one step of plain SGD** with the tool's own clipping
option, and returns the gradient the optimizer applied,
:math:`g = (\theta_0 - \theta_1)/\eta` (:func:`~clipping_lib.lab.tools_check.applied_gradient`),
for the lesson to compare with what :func:`clipping_lib.clip.clip_grad_norm_` leaves.

The tools are imported inside the functions, so this module imports without them (they
are the ``tools`` extra). :func:`quiet_tool_environment` must run before the first of them
is imported: it picks Keras' PyTorch backend and keeps Hugging Face offline.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from functools import cache

import numpy as np
import torch
from torch import Tensor, nn

from clipping_lib.clip import clip_grad_norm_
from clipping_lib.lab.parallel import make_model
from clipping_lib.lab.tools_check import applied_gradient, flat, relative_difference

__all__ = [
    "Measurements",
    "accelerate_step",
    "clipped_copy",
    "gpt2_config",
    "keras_step",
    "keras_weights",
    "lightning_step",
    "mse",
    "quiet_tool_environment",
    "reference_grads",
    "trainer_step",
]


def quiet_tool_environment() -> None:
    """Keras on PyTorch, Hugging Face offline: call before importing any tool."""
    os.environ.update(
        KERAS_BACKEND="torch",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    # one deprecation warning inside Lightning 2.6, which says nothing about clipping
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The lesson's loss: the mean squared error of ``model(x)`` against ``y``."""
    return torch.mean((model(x) - y) ** 2)


def reference_grads(
    x: Tensor, y: Tensor, clip: Callable[[Iterable[nn.Parameter]], object] | None = None
) -> tuple[Tensor, object, nn.Module]:
    """The whole batch's gradient of a fresh model, clipped in place by ``clip(parameters)``.

    Returns ``(flat gradient, what clip returned, the model)``.
    """
    model = make_model(seed=0)
    mse(model, x, y).backward()
    returned = clip(model.parameters()) if clip else None
    return flat([p.grad for p in model.parameters()]), returned, model


class Measurements(dict):
    """Tool name -> relative difference from ``clipping_lib``, printed as it is recorded."""

    def record(self, tool: str, got: Tensor, want: Tensor) -> float:
        self[tool] = relative_difference(got, want)
        print(f"{tool}: relative difference {self[tool]:.1e}")
        return self[tool]


def clipped_copy(grads: list[Tensor], max_norm: float, eps: float) -> Tensor:
    """``clip_grad_norm_`` with ``eps`` applied to copies of ``grads``, flattened."""
    params = [nn.Parameter(g.clone()) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    clip_grad_norm_(params, max_norm, eps=eps)
    return flat([p.grad for p in params])


# --------------------------------------------------------------------- PyTorch Lightning


@cache
def _regression_module() -> type:
    import pytorch_lightning as pl

    class Regression(pl.LightningModule):
        """The lesson's MLP; records the gradient norm the hook sees, before clipping."""

        def __init__(self, lr: float):
            super().__init__()
            self.net, self.lr, self.seen_norms = make_model(seed=0), lr, []

        def training_step(self, batch, batch_idx):
            return mse(self.net, *batch)

        def on_before_optimizer_step(self, optimizer):
            # runs after backward (and after AMP's unscale_), before the Trainer clips
            grads = [p.grad for p in self.parameters()]
            self.seen_norms.append(torch.nn.utils.get_total_norm(grads))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    return Regression


def lightning_step(x: Tensor, y: Tensor, lr: float = 1.0, **trainer_kwargs) -> tuple:
    """One ``pl.Trainer`` step; returns (applied gradient, norm seen before clipping)."""
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "lightning_fabric"):  # the Trainer's banners
        logging.getLogger(name).setLevel(logging.ERROR)
    module = _regression_module()(lr)
    before = flat(module.parameters())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(x))
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, loader)
    return applied_gradient(before, flat(module.parameters()), lr), module.seen_norms[0]


# ------------------------------------------------------------------ Hugging Face Accelerate


def accelerate_step(
    accelerator, x: Tensor, y: Tensor, guard: bool, lr: float = 1.0, max_norm: float = 1.0
) -> tuple[Tensor, list[Tensor]]:
    """Two micro-batches under ``accelerator.accumulate``; clip only on the syncing one if
    ``guard``, else after each. The outliers come first, so the first micro-batch alone
    is above the threshold. Returns (applied gradient, the norms ``clip_grad_norm_`` returned).
    """
    model = make_model(seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    outliers_first = torch.utils.data.TensorDataset(x.flip(0), y.flip(0))
    loader = torch.utils.data.DataLoader(outliers_first, batch_size=len(x) // 2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    before, norms = flat(model.parameters()), []
    for xb, yb in loader:
        with accelerator.accumulate(model):
            accelerator.backward(mse(model, xb, yb))
            if accelerator.sync_gradients or not guard:
                norms.append(accelerator.clip_grad_norm_(model.parameters(), max_norm))
            optimizer.step()
            optimizer.zero_grad()
    return applied_gradient(before, flat(model.parameters()), lr), norms


# ------------------------------------------------------------ the Transformers Trainer


def gpt2_config():
    """A one-layer GPT-2 with a 64-token vocabulary and no dropout, built with no download."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


def trainer_step(tokens: Tensor, labels: Tensor, max_grad_norm: float = 0.5, lr: float = 1.0):
    """One ``Trainer`` step with SGD; and its twin: the same model's own loss, clipped by
    ``clipping_lib``. Returns (applied gradient, the twin's clipped gradient, the logged
    ``grad_norm``, the twin's norm)."""
    from transformers import GPT2LMHeadModel, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = flat(model.parameters())
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=len(tokens),
        learning_rate=lr, lr_scheduler_type="constant", optim="sgd", weight_decay=0.0,
        max_grad_norm=max_grad_norm, report_to=[], logging_steps=1, save_strategy="no",
        use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    rows = [{"input_ids": t, "labels": lab} for t, lab in zip(tokens, labels, strict=True)]
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    trainer.remove_callback(PrinterCallback)  # it would print run times
    trainer.train()
    logged = trainer.state.log_history[0]["grad_norm"]
    twin = GPT2LMHeadModel(gpt2_config())
    twin.load_state_dict(start)
    twin(input_ids=tokens, labels=labels).loss.backward()
    norm = clip_grad_norm_(twin.parameters(), max_grad_norm)
    got = applied_gradient(before, flat(model.parameters()), lr)
    return got, flat([p.grad for p in twin.parameters()]), logged, norm.item()


# ------------------------------------------------------------------------------- Keras


def keras_weights(model: nn.Module) -> list[np.ndarray]:
    """The MLP's weights in Keras' layout: a ``Dense`` kernel is (in, out), the transpose
    of a ``Linear`` weight."""
    return [
        model[0].weight.detach().T.numpy(), model[0].bias.detach().numpy(),
        model[2].weight.detach().T.numpy(), model[2].bias.detach().numpy(),
    ]  # fmt: skip


def keras_step(weights: list[np.ndarray], x: Tensor, y: Tensor, lr: float = 1.0, **clip_option):
    """One ``train_on_batch`` of the same MLP in Keras with ``clip_option`` (``clipnorm``,
    ``global_clipnorm`` or ``clipvalue``); returns each variable's applied gradient in
    PyTorch's layout, float64."""
    import keras

    keras_model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(4)]
    )
    keras_model.set_weights(weights)
    keras_model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, **clip_option), loss="mse")
    keras_model.train_on_batch(x.numpy(), y.numpy())
    steps = [(w0 - w1) / lr for w0, w1 in zip(weights, keras_model.get_weights(), strict=True)]
    steps[0], steps[2] = steps[0].T, steps[2].T  # back to PyTorch's layout
    return [torch.from_numpy(s).double() for s in steps]

"""A character-level corpus built from text the pinned requirements install: no download.

The text is the source of ``torch.nn.modules`` (every ``*.py`` file of that package,
sorted by name, concatenated), so the torch pin in ``requirements.txt`` fixes it
byte for byte; :attr:`CharCorpus.sha256` names the exact text a run saw. Characters are
the tokens: the vocabulary is every character that occurs, sorted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.modules
from torch import Tensor

from clipping_lib._checks import check_int

__all__ = ["CharCorpus", "torch_nn_source"]


def torch_nn_source() -> str:
    """The source text of ``torch/nn/modules/*.py``, files sorted by name."""
    folder = Path(torch.nn.modules.__file__).parent
    return "".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.py")))


@dataclass(frozen=True)
class CharCorpus:
    """A text as one long tensor of character ids, split into train and validation.

    The last ``val_fraction`` of the text is the validation split; batches are windows
    of ``context + 1`` characters starting at random offsets (inputs, next-character
    targets).
    """

    text: str
    vocab: str
    train: Tensor
    val: Tensor

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> CharCorpus:
        if not isinstance(text, str) or len(text) < 2:
            raise ValueError("text must be a str of at least 2 characters")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        vocab = "".join(sorted(set(text)))
        index = {ch: i for i, ch in enumerate(vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        split = int(len(ids) * (1 - val_fraction))
        return cls(text, vocab, ids[:split], ids[split:])

    @classmethod
    def torch_source(cls) -> CharCorpus:
        """The course corpus: :func:`torch_nn_source` (the source of ``torch.nn.modules``)."""
        return cls.from_text(torch_nn_source())

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the text (UTF-8): equal hashes, equal corpora."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def unigram_loss(self) -> float:
        r"""The trivial baseline: validation cross-entropy (nats per character) of a model
        that ignores the context and predicts the training split's character frequencies,
        :math:`-\sum_c q_c \ln p_c` (:math:`q` validation, :math:`p` training frequencies)."""
        p = torch.bincount(self.train, minlength=self.vocab_size).double()
        q = torch.bincount(self.val, minlength=self.vocab_size).double()
        p, q = p / p.sum(), q / q.sum()
        seen = q > 0
        return float(-(q[seen] * p[seen].log()).sum())

    def encode(self, text: str) -> Tensor:
        index = {ch: i for i, ch in enumerate(self.vocab)}
        missing = sorted(set(text) - set(index))
        if missing:
            raise ValueError(f"text has characters outside the vocabulary: {missing[:5]}")
        return torch.tensor([index[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    def batch(
        self,
        batch_size: int,
        context: int,
        generator: torch.Generator,
        split: str = "train",
    ) -> tuple[Tensor, Tensor]:
        """``batch_size`` random windows: inputs ``(B, context)`` and targets shifted by one."""
        batch_size = check_int(batch_size, "batch_size", 1)
        context = check_int(context, "context", 1)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        data = self.train if split == "train" else self.val
        if len(data) <= context + 1:
            raise ValueError(f"context {context} is too long for the {split} split")
        starts = torch.randint(len(data) - context - 1, (batch_size,), generator=generator)
        windows = data[starts[:, None] + torch.arange(context + 1)]
        return windows[:, :-1], windows[:, 1:]

    def batches(
        self, steps: int, batch_size: int, context: int, seed: int = 0, split: str = "train"
    ) -> tuple[Tensor, Tensor]:
        """``steps`` batches at once from one seeded generator: ``(steps, B, context)`` each."""
        steps = check_int(steps, "steps", 1)
        generator = torch.Generator().manual_seed(seed)
        pairs = [self.batch(batch_size, context, generator, split) for _ in range(steps)]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

"""The course's lab bench: what the lessons are built from, not what a training loop imports.

Demo models and spectral tools (:mod:`.models`, :mod:`.spectral`), tasks and data
(:mod:`.tasks`, :mod:`.digits`, :mod:`.corpus`), training loops and batched sweeps
(:mod:`.training`, :mod:`.compare`, :mod:`.sweep`), landscapes and theory helpers
(:mod:`.landscape`, :mod:`.smoothness`, :mod:`.noise`), the tiny GPT (:mod:`.gpt`), the
gloo worker harness and its experiments (:mod:`.workers`, :mod:`.parallel`), tool checks
and bug experiments (:mod:`.tools_check`, :mod:`.bugs`), host-sync counters
(:mod:`.syncs`), plots, the slider-panel machinery and one panel module per lesson
(:mod:`.plots`, :mod:`.widgets`, :mod:`.panels`).

It needs the ``course`` extra (``pip install "clipping-lib[course]"``): matplotlib,
pillow, ipywidgets and scikit-learn. The practitioner's floor, ``clipping_lib.*``, never
imports it.
"""

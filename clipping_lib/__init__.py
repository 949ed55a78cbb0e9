"""clipping_lib: the tested library behind the hands-on gradient clipping course.

The functions a learner uses most are importable from the top level::

    from clipping_lib import clip_grad_norm_, clip_grad_value_, get_total_norm
"""

from clipping_lib.clip import (
    clip_by_norm,
    clip_by_value,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)

__all__ = [
    "clip_by_norm",
    "clip_by_value",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_grads_with_norm_",
    "get_total_norm",
]

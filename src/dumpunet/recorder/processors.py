"""Replace attention processors of chosen layers with wrappers, and put the originals back.

Both attention capture and per-block prompts work this way: a wrapper calls the processor it
replaces (so the layer computes exactly what it did) and does its own work around that call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class ProcessorWrapper:
    """A processor that delegates to ``inner`` and declares exactly ``inner``'s call signature.

    diffusers hands a processor only the keyword arguments its ``__call__`` declares (it inspects
    ``processor.__call__``), so a wrapper with a ``*args, **kwargs`` signature would silently drop
    arguments the wrapped processor needs (IP-Adapter scales, for instance).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner

        def call(*args: Any, **kwargs: Any) -> torch.Tensor:
            return self.run(*args, **kwargs)

        self.__call__ = functools.update_wrapper(call, inner.__call__)  # type: ignore[method-assign]

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.run(attn, hidden_states, *args, **kwargs)

    def run(self, attn: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError


def wrap_processors(unet: nn.Module, wrappers: Mapping[str, Callable[[Any], Any]]) -> Callable[[], None]:
    """Wrap the processor of each attention module path in ``wrappers``; return a function that undoes it.

    ``wrappers`` maps a module path (``down_blocks.0.attentions.0.transformer_blocks.0.attn2``) to a
    factory that takes the current processor and returns its replacement.
    """
    original = dict(unet.attn_processors)
    procs = dict(original)
    for path, make in wrappers.items():
        key = f"{path}.processor"
        procs[key] = make(original[key])
    unet.set_attn_processor(procs)  # it pops from the dict it gets: procs is ours

    def restore() -> None:
        unet.set_attn_processor(dict(original))

    return restore

"""convert_to_nvfp4: run a model's ``nn.Linear`` layers with the NVFP4 recipe, in place."""

from __future__ import annotations

from typing import Callable

from torch import nn

from fp4dist.nn import NVFP4Linear
from fp4dist.recipe import NVFP4Recipe

__all__ = ["convert_to_nvfp4"]


def convert_to_nvfp4(model: nn.Module, recipe=NVFP4Recipe(),
                     module_filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Turn every ``nn.Linear`` of ``model`` that ``module_filter_fn(module, fqn)`` accepts (all when None)
    into an :class:`fp4dist.NVFP4Linear`, in place; returns ``model``.

    Each converted layer is the same module object with the same weight and bias Parameters (values,
    device, dtype, ``requires_grad``, and identity, so an optimizer built before still holds them), and
    its SR stream is named by its fully-qualified name (``fqn``, as ``model.named_modules()`` gives it).
    Only modules whose type is exactly ``nn.Linear`` are converted: subclasses (with forwards of their
    own) and layers already converted are left as they are. ``model`` itself may be an ``nn.Linear``.
    """
    for fqn, module in list(model.named_modules()):
        if type(module) is nn.Linear and (module_filter_fn is None or module_filter_fn(module, fqn)):
            NVFP4Linear.from_linear(module, recipe).set_rng_name(fqn)
    return model

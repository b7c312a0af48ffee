"""Parameter groups: which parameters an optimizer updates, and with which settings.

An optimizer keeps its parameters in groups, each a dict with ``"params"`` (the
Parameters), ``"names"`` (one string each) and every setting (``"lr"``,
``"weight_decay"``, ...). What you pass decides the groups:

| ``params``                                | groups                                            |
|-------------------------------------------|---------------------------------------------------|
| a ``Module`` or ``[(name, param), ...]``  | two: matrices (ndim >= 2) get ``weight_decay``,   |
|                                           | vectors (norm weights, biases) get none           |
| ``[param, ...]``                          | one, every parameter decayed, named "0", "1", ... |
| ``[{"params": ..., "lr": ...}, ...]``     | as given; a setting left out takes the default    |

Weight decay pulls weights toward zero. That suits a matrix, whose overall size the
network can absorb elsewhere, but a norm weight or a bias sets a scale or an offset, and
decaying it only fights the data: GPT-2, nanoGPT and Llama all leave them out. Parameters
that do not require gradients (frozen, as under LoRA) are left out, so no state is kept
for them.

>>> import numpy as np
>>> from tinyllm.nn import Linear
>>> groups = make_param_groups(Linear(3, 2), {"lr": 0.1, "weight_decay": 0.01}, "AdamW")
>>> [(g["names"], g["weight_decay"]) for g in groups]
[(['weight'], 0.01), (['bias'], 0.0)]
"""

import numpy as np

from ..autograd import Tensor
from ..nn import Module


def make_param_groups(params, defaults, owner):
    """The group dicts for ``params``, every setting filled in from ``defaults``.

    ``owner`` (the optimizer's name) starts every error message.
    """
    items = params if isinstance(params, Module) else list(params)
    if isinstance(items, list) and items and all(isinstance(x, dict) for x in items):
        groups, count = [], 0
        for index, spec in enumerate(items):
            unknown = sorted(set(spec) - {"params", *defaults})
            if unknown or "params" not in spec:
                raise ValueError(
                    f"{owner}: param group {index} has unknown keys {unknown or 'none'}"
                    f"{'' if 'params' in spec else ' and no params'}; expected 'params' "
                    f"and some of {', '.join(defaults)}"
                )
            named, _ = _named(spec["params"], count, owner)
            count += len(named)
            groups.append(_group({**defaults, **spec}, named))
    else:
        named, has_names = _named(items, 0, owner)
        if has_names:  # matrices decay, vectors (norm weights, biases) do not
            no_decay = {**defaults, "weight_decay": 0.0}
            groups = [
                _group(defaults, [(n, p) for n, p in named if p.ndim >= 2]),
                _group(no_decay, [(n, p) for n, p in named if p.ndim < 2]),
            ]
        else:
            groups = [_group(defaults, named)]
    groups = [group for group in groups if group["params"]]
    _check(groups, owner)
    return groups


def _group(settings, named):
    """One group dict: the settings, then the parameters and their names."""
    return {**settings, "params": [p for _, p in named], "names": [n for n, _ in named]}


def _named(params, first_index, owner):
    """[(name, tensor)] and whether the names were given, from a Module, (name, tensor)
    pairs, or tensors (named by position); frozen tensors are left out."""
    if isinstance(params, Tensor):
        raise TypeError(f"{owner}: expected a list of parameters, got one Tensor: wrap it in [ ]")
    if isinstance(params, Module):
        named, has_names = list(params.named_parameters()), True
    else:
        items = list(params)
        if all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], Tensor) for x in items):
            named, has_names = [(str(name), p) for name, p in items], True
        elif all(isinstance(x, Tensor) for x in items):
            named, has_names = [(str(first_index + i), p) for i, p in enumerate(items)], False
        else:
            kinds = ", ".join(sorted({type(x).__name__ for x in items}))
            raise TypeError(
                f"{owner}: expected a Module, (name, Parameter) pairs, Parameters or "
                f"param-group dicts, got a list of {kinds}"
            )
    return [(name, p) for name, p in named if p.requires_grad], has_names


def _check(groups, owner):
    """Every parameter a float, in one group only, all on one backend."""
    if not groups:
        raise ValueError(
            f"{owner}: got no parameters to optimize (frozen ones, with "
            "requires_grad=False, are left out)"
        )
    seen_names, seen_ids, backends = set(), set(), set()
    for group in groups:
        for name, p in zip(group["names"], group["params"]):
            if not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"{owner}: parameter {name} has dtype {p.dtype}, not a float")
            if name in seen_names or id(p) in seen_ids:
                raise ValueError(f"{owner}: parameter {name} appears more than once")
            seen_names.add(name)
            seen_ids.add(id(p))
            backends.add(p.backend.name)
    if len(backends) > 1:
        raise ValueError(f"{owner}: parameters live on several backends {sorted(backends)}")

"""Which layers LoRA adapts: targets matched against the paths of a model's Linear layers.

A Transformer's Linear layers are

    blocks.N.attention.q_proj, k_proj, v_proj, o_proj        attention
    blocks.N.mlp.up, mlp.down (GELU) or gate, up, down (SwiGLU)
    blocks.N.mlp.router, blocks.N.mlp.experts.E.gate, ...    a mixture of experts
    lm_head                                                   the output layer, when untied

A target is the end of such a path (``q_proj``, ``mlp.down``), with shell wildcards
allowed (``mlp.*``: every Linear in the MLPs; ``blocks.0.*``: the first block's). Where the
model has a Hugging Face form, a target may also be the end of the module's name there,
PEFT's names: ``gate_proj`` is ``mlp.gate``, ``c_attn`` (GPT-2's fused query, key and
value) is ``q_proj``, ``k_proj`` and ``v_proj``, ``c_proj`` is both of GPT-2's output
projections, as in PEFT.

>>> paths = ["blocks.0.attention.q_proj", "blocks.0.mlp.up", "blocks.1.attention.q_proj"]
>>> match_targets(paths, ["q_proj"])
['blocks.0.attention.q_proj', 'blocks.1.attention.q_proj']
>>> match_targets(paths, "blocks.0.*")
['blocks.0.attention.q_proj', 'blocks.0.mlp.up']
>>> match_targets(paths, "gate")  # doctest: +ELLIPSIS
Traceback (most recent call last):
ValueError: apply_lora: target 'gate' names no Linear layer; the model's are blocks.N.attention...
"""

from fnmatch import fnmatchcase


def match_targets(paths, target_modules, aliases=lambda path: None):
    """The ``paths`` that ``target_modules`` (a name or several) name, in their order; a
    target that names none is an error that lists them. ``aliases(path)`` gives a path's
    Hugging Face name (or None), which a target may name instead."""
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    chosen = set()
    for target in targets:
        found = {path for path in paths if _matches(target, path, aliases(path))}
        if not found:
            raise ValueError(
                f"apply_lora: target {target!r} names no Linear layer; the model's are "
                f"{_summarize(paths, aliases)}"
            )
        chosen |= found
    return [path for path in paths if path in chosen]


def _matches(target, path, alias):
    return any(
        name is not None and (fnmatchcase(name, target) or fnmatchcase(name, f"*.{target}"))
        for name in (path, alias)
    )


def _summarize(paths, aliases):
    """The layer paths with block and expert numbers as N, and their Hugging Face names."""

    def general(name):
        return ".".join("N" if part.isdigit() else part for part in name.split("."))

    ours = list(dict.fromkeys(general(p) for p in paths))
    theirs = list(dict.fromkeys(general(a) for a in map(aliases, paths) if a is not None))
    return ", ".join(ours) + (f" (Hugging Face names: {', '.join(theirs)})" if theirs else "")


# --- a module by its path ----------------------------------------------------------------------
def _parent(model, path):
    """(the container holding ``path``'s module, its key or attribute name)."""
    *outer, last = path.split(".")
    node = model
    for part in outer:
        node = node[int(part)] if isinstance(node, (list, tuple)) else _child(node, part)
    return node, int(last) if isinstance(node, (list, tuple)) else last


def _child(node, key):
    return node[key] if isinstance(node, dict) else getattr(node, key)


def get_module(model, path):
    """The module at ``path`` of ``model`` (a name from ``named_modules``)."""
    node, key = _parent(model, path)
    return node[key] if isinstance(node, (list, tuple, dict)) else getattr(node, key)


def set_module(model, path, module):
    """Put ``module`` at ``path`` of ``model`` in place of the one there."""
    node, key = _parent(model, path)
    if isinstance(node, (list, dict)):
        node[key] = module
    else:
        setattr(node, key, module)

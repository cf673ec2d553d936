"""Helpers for flat parameter dicts keyed by canonical names ("blocks.0.att.W_query.weight", ...)."""


def subdict(params, prefix):
    """The entries under `prefix` with the prefix removed: subdict(p, "att.") -> {"W_query.weight": ...}."""
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def prefixed(grads, prefix):
    """The inverse of subdict: every key gets `prefix` in front."""
    return {prefix + name: value for name, value in grads.items()}


def unique_arrays(params):
    """(name, array) pairs with tied arrays (the same object under two names) listed once, first name wins."""
    seen = set()
    for name, value in params.items():
        if id(value) not in seen:
            seen.add(id(value))
            yield name, value

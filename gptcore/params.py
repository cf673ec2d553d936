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


def check_param_shapes(params, expected, *, what="parameters", fix=""):
    """ValueError naming the problem when `params` does not hold exactly the names and shapes of `expected`
    (name -> shape); `what` names the dict in the message, `fix` is appended to the name mismatch."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what} do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}{fix}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != tuple(shape):
            raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, the config needs {tuple(shape)}")

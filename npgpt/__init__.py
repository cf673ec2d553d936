"""npgpt: GPT-2 in pure NumPy, every component with a hand-written backward.

Never imports torch. See npgpt/README.md for the layout and the speed notes.
"""

# OpenBLAS (NumPy's BLAS) keeps its worker threads busy-waiting for 2**28 cycles (~0.1 s) after every
# matmul. Between the matmuls of a step npgpt runs elementwise work on all cores (npgpt.speed.parallel), and
# those spinning threads take the cores from it (and from every other process): measured here, the 124M
# forward on 2 threads took 2.4 s with a short timeout and 7-16 s with the default on a busy machine.
# OPENBLAS_THREAD_TIMEOUT=4 lets idle workers sleep at once. OpenBLAS reads it when it loads, so this runs
# before npgpt's first NumPy import; if a script (one Python thread) imported NumPy first, OpenBLAS's threads
# are restarted with it (npgpt.speed.blas_threads). A value already set wins.
from npgpt.speed.blas_threads import apply_at_import as _short_blas_thread_timeout  # noqa: E402

_short_blas_thread_timeout()

# Freed activations stay with malloc for the next call instead of going back to the kernel (npgpt.speed.memory):
# a loop over npgpt.model.forward / backward paid 1-2 s of page faults per GPT-2 124M step without it.
# Process-wide; NPGPT_KEEP_FREED_MEMORY=0 turns it off.
from npgpt.speed.memory import apply_from_environment  # noqa: E402

apply_from_environment()

from gptcore.config import PRESETS, ConfigError, GPTConfig, get_config  # noqa: E402  (after the setting above)
from gptcore.formats import weights as _weights  # noqa: E402
from gptcore.formats.weights import WeightsError  # noqa: E402

__all__ = ["GPTConfig", "PRESETS", "ConfigError", "get_config", "load_weights", "WeightsError"]


def load_weights(path, layout="fast"):
    """(config, params) from weights in any format gptcore.formats.weights.load_weights reads (an OpenAI or
    Hugging Face folder, a GGUF file, a checkpoint or run, a manifest name), the matrices in npgpt's `layout`:
    "fast" (the default: decodes fastest, trains as fast) or "torch" (row by row); see npgpt.model.LAYOUTS."""
    from npgpt.model import check_layout, relay_in_place
    check_layout(layout)
    config, params = _weights.load_weights(path)
    return config, relay_in_place(params, config) if layout == "fast" else params

"""npgpt: GPT-2 in pure NumPy, every component with a hand-written backward.

Never imports torch. See npgpt/README.md for the layout and the speed notes.
"""
from npgpt.config import PRESETS, ConfigError, GPTConfig, get_config
from npgpt.weights import WeightsError, load_weights

__all__ = ["GPTConfig", "PRESETS", "ConfigError", "get_config", "load_weights", "WeightsError"]

"""GPTConfig and the presets live in gptcore.config (framework-free, shared by every floor); this module
keeps the entry point `npgpt.config.get_config` working where the code moved."""
from gptcore.config import PRESETS, SIZE_ALIASES, ConfigError, GPTConfig, get_config  # noqa: F401

__all__ = ["GPTConfig", "PRESETS", "SIZE_ALIASES", "ConfigError", "get_config"]

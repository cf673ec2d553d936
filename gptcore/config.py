"""GPTConfig: the one model description shared by npgpt, torchgpt and every loader.

Dimension letters used across the project:
    B batch, T time (sequence), C embedding width (emb_dim), H heads, D head width (C // H),
    V vocabulary, F feed-forward width (4C), L layers.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class ConfigError(ValueError):
    """A GPTConfig that cannot describe a working model."""


ARCHITECTURES = ("gpt2",)      # the specs in gptcore.arch


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257      # V
    context_length: int = 1024   # T_max, rows of pos_emb.weight
    emb_dim: int = 768           # C
    n_heads: int = 12            # H
    n_layers: int = 12           # L
    drop_rate: float = 0.1
    qkv_bias: bool = False
    tie_weights: bool = True     # out_head.weight is tok_emb.weight
    arch: str = "gpt2"           # which spec in gptcore.arch names and shapes the parameters

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}); "
                f"pick n_heads among the divisors of {self.emb_dim}"
            )
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"GPTConfig.arch must be one of {list(ARCHITECTURES)}, got {self.arch!r}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ConfigError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate!r}")

    @property
    def head_dim(self) -> int:
        """D = C // H."""
        return self.emb_dim // self.n_heads

    @property
    def ff_dim(self) -> int:
        """F = 4C, the feed-forward hidden width."""
        return 4 * self.emb_dim

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown GPTConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**values)


# The four OpenAI GPT-2 sizes (qkv_bias and tied head as in the released checkpoints) and `tiny`.
PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True),    # 124M
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24, qkv_bias=True),  # 355M
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36, qkv_bias=True),   # 774M
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48, qkv_bias=True),      # 1558M
    # For tests, the demo and quick runs: ~100k parameters in its two blocks; the GPT-2 vocabulary
    # adds 50257 * 64 = 3.2M in the (tied) token embedding, which no byte-level GPT-2 model avoids.
    "tiny": GPTConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0),
}

# OpenAI's own size names, accepted wherever a preset name is.
SIZE_ALIASES = {"124M": "gpt2-small", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


def get_config(name: str, **overrides) -> GPTConfig:
    """The preset `name` (or OpenAI size like '124M'), with optional field overrides."""
    key = SIZE_ALIASES.get(name, name)
    if key not in PRESETS:
        choices = ", ".join(list(PRESETS) + list(SIZE_ALIASES))
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {choices}")
    config = PRESETS[key]
    return config.replace(**overrides) if overrides else config

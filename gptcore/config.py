"""GPTConfig: the one model description shared by npgpt, torchgpt and every loader.

Dimension letters used across the project:
    B batch, T time (sequence), C embedding width (emb_dim), H heads, D head width (C // H),
    V vocabulary, F feed-forward width (ff_dim: 4C for GPT-2, the preset's for Llama), L layers,
    KV key/value heads (n_kv_heads: H for GPT-2; fewer for Llama's grouped-query attention).

Fields that follow others unless given: ff_dim defaults to 4 * emb_dim and n_kv_heads to n_heads (None in
the constructor or a config.json without the key means "the default"). replace() keeps them following:
a config whose ff_dim is 4C (or n_kv_heads is H) gets the new default when emb_dim (n_heads) changes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional


class ConfigError(ValueError):
    """A GPTConfig that cannot describe a working model."""


ARCHITECTURES = ("gpt2", "llama")      # the specs in gptcore.arch

# The fields that follow another field unless given: name -> the default computed from the config.
_DERIVED_DEFAULTS = {"ff_dim": lambda c: 4 * c.emb_dim, "n_kv_heads": lambda c: c.n_heads}


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
    ff_dim: Optional[int] = None      # F, the feed-forward hidden width; None: 4C
    n_kv_heads: Optional[int] = None  # key/value heads (Llama's grouped-query attention); None: n_heads
    rope_theta: float = 10000.0       # Llama: base of the rotary position angles (GPT-2 does not use it)
    norm_eps: float = 1e-5            # Llama: RMSNorm's eps (GPT-2's LayerNorm keeps its own 1e-5)
    # Llama 3's "llama3" rope scaling {rope_type, factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings} as a Hugging Face config.json gives it; None: plain RoPE.
    rope_scaling: Optional[dict] = dataclasses.field(default=None, hash=False)

    def __post_init__(self):
        for name, default in _DERIVED_DEFAULTS.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default(self))       # frozen: set once, here
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "ff_dim", "n_kv_heads"):
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
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or value == float("inf"):
                raise ConfigError(f"GPTConfig.{name} must be a positive number, got {value!r}")
        if self.arch == "gpt2":
            self._check_gpt2()
        elif self.arch == "llama":
            self._check_llama()

    def _check_gpt2(self):
        if self.n_kv_heads != self.n_heads:
            raise ConfigError(f"GPT-2 has no grouped-query attention: n_kv_heads ({self.n_kv_heads}) must equal "
                              f"n_heads ({self.n_heads}); leave n_kv_heads out, or use arch='llama'")

    def _check_llama(self):
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"GPTConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads}): "
                f"each key/value head serves n_heads / n_kv_heads query heads; pick n_kv_heads among the "
                f"divisors of {self.n_heads}")
        if self.head_dim % 2 != 0:
            raise ConfigError(
                f"the rotary position embedding needs an even head width, got emb_dim / n_heads = "
                f"{self.emb_dim} / {self.n_heads} = {self.head_dim}; pick n_heads so that emb_dim / n_heads is even")
        if self.qkv_bias:
            raise ConfigError("the Llama architecture has no biases: set qkv_bias=False")
        if self.drop_rate != 0.0:
            raise ConfigError(f"the Llama architecture has no dropout: set drop_rate=0 (got {self.drop_rate!r})")

    @property
    def head_dim(self) -> int:
        """D = C // H."""
        return self.emb_dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        """The width of the keys (and values) of all key/value heads: n_kv_heads * D (= C without GQA)."""
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes) -> "GPTConfig":
        """A copy with `changes`; ff_dim and n_kv_heads that follow their defaults (4C, H) keep following."""
        for name, default in _DERIVED_DEFAULTS.items():
            if name not in changes and getattr(self, name) == default(self):
                changes[name] = None
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


# The four OpenAI GPT-2 sizes (qkv_bias and tied head as in the released checkpoints), `tiny`, and Llamas.
PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(emb_dim=768, n_heads=12, n_layers=12, qkv_bias=True),    # 124M
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24, qkv_bias=True),  # 355M
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36, qkv_bias=True),   # 774M
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48, qkv_bias=True),      # 1558M
    # For tests, the demo and quick runs: ~100k parameters in its two blocks; the GPT-2 vocabulary
    # adds 50257 * 64 = 3.2M in the (tied) token embedding, which no byte-level GPT-2 model avoids.
    "tiny": GPTConfig(context_length=64, emb_dim=64, n_heads=4, n_layers=2, drop_rate=0.0),
    # Llama: SmolLM2-135M (Hugging Face's config: 30 layers, 9 query / 3 key-value heads of width 64,
    # SwiGLU width 1536, theta 100000, RMSNorm eps 1e-5, 49152 tokens, tied head, context 8192) ...
    "smollm2-135m": GPTConfig(arch="llama", vocab_size=49152, context_length=8192, emb_dim=576, n_heads=9,
                              n_kv_heads=3, n_layers=30, ff_dim=1536, rope_theta=100000.0, norm_eps=1e-5,
                              drop_rate=0.0, tie_weights=True),
    # ... and a tiny Llama for tests: 4 query heads sharing 2 key/value heads of width 16.
    "tiny-llama": GPTConfig(arch="llama", vocab_size=50257, context_length=64, emb_dim=64, n_heads=4,
                            n_kv_heads=2, n_layers=2, ff_dim=160, rope_theta=10000.0, norm_eps=1e-5,
                            drop_rate=0.0, tie_weights=True),
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

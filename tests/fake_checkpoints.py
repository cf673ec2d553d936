"""Small GPT-2 checkpoints in the exact released layouts, and a reference forward that reads them directly.

    hparams = openai_hparams(n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    tf_tensors = random_openai_tensors(hparams, seed=0)      # {"model/wte": (V, C), "model/h0/attn/c_attn/w": (1, C, 3C), ...}
    write_openai_checkpoint(folder, hparams, tf_tensors)     # hparams.json + model.ckpt.* (TF1 Saver, graph mode)
    write_hf_checkpoint(folder, hparams, openai_to_hf_tensors(tf_tensors, hparams))   # config.json + model.safetensors

`reference_logits` is a separate float64 GPT-2 forward written on the released (in, out) layout, so the
loaders' splits and transposes are checked against code that never goes through them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def openai_hparams(n_vocab=61, n_ctx=16, n_embd=32, n_head=4, n_layer=2) -> dict:
    return {"n_vocab": n_vocab, "n_ctx": n_ctx, "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer}


def openai_shapes(hparams: dict) -> dict[str, tuple[int, ...]]:
    """TF variable name -> shape, as in OpenAI's model.ckpt (Conv1D weights [1, in, out])."""
    V, T, C, L = hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_layer"]
    shapes = {"model/wte": (V, C), "model/wpe": (T, C)}
    for i in range(L):
        h = f"model/h{i}"
        shapes.update({
            f"{h}/ln_1/g": (C,), f"{h}/ln_1/b": (C,),
            f"{h}/attn/c_attn/w": (1, C, 3 * C), f"{h}/attn/c_attn/b": (3 * C,),
            f"{h}/attn/c_proj/w": (1, C, C), f"{h}/attn/c_proj/b": (C,),
            f"{h}/ln_2/g": (C,), f"{h}/ln_2/b": (C,),
            f"{h}/mlp/c_fc/w": (1, C, 4 * C), f"{h}/mlp/c_fc/b": (4 * C,),
            f"{h}/mlp/c_proj/w": (1, 4 * C, C), f"{h}/mlp/c_proj/b": (C,),
        })
    shapes.update({"model/ln_f/g": (C,), "model/ln_f/b": (C,)})
    return shapes


def random_openai_tensors(hparams: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 tensors under OpenAI's names; LayerNorm gains near 1, everything else O(0.1-0.3)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in openai_shapes(hparams).items():
        draw = rng.standard_normal(shape, dtype=np.float32)
        if name.endswith("/g"):
            tensors[name] = (1.0 + 0.1 * draw).astype(np.float32)
        elif name.endswith("/w") or name in ("model/wte", "model/wpe"):
            tensors[name] = (0.3 * draw).astype(np.float32)
        else:
            tensors[name] = (0.1 * draw).astype(np.float32)
    return tensors


def openai_to_hf_tensors(tensors: dict[str, np.ndarray], hparams: dict, *, prefix: str = "transformer.",
                         buffers: bool = True, lm_head: bool = False) -> dict[str, np.ndarray]:
    """The same weights under Hugging Face GPT2LMHeadModel names (Conv1D (in, out): TF's [1, in, out] squeezed).

    buffers: add the attention-mask buffers old Hub files carry (h.{i}.attn.bias (1, 1, T, T), .masked_bias).
    lm_head: add lm_head.weight equal to wte (the tied head stored explicitly).
    """
    leaf_names = {"g": "weight", "b": "bias", "w": "weight"}
    hf = {}
    for name, value in tensors.items():
        parts = name.split("/")[1:]                       # drop "model"
        if parts[0] in ("wte", "wpe"):
            key = f"{parts[0]}.weight"
        else:
            head = parts[:-1]
            if head[0].startswith("h"):
                head = ["h", head[0][1:]] + head[1:]
            key = ".".join(head + [leaf_names[parts[-1]]])
        hf[prefix + key] = value[0] if parts[-1] == "w" else value
    if buffers:
        T = hparams["n_ctx"]
        for i in range(hparams["n_layer"]):
            hf[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((T, T), dtype=np.float32))[None, None]
            hf[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    if lm_head:
        hf["lm_head.weight"] = tensors["model/wte"].copy()
    return hf


def write_openai_checkpoint(folder, hparams: dict, tensors: dict[str, np.ndarray]) -> Path:
    """hparams.json + model.ckpt.{index,data-00000-of-00001,meta} + checkpoint, as OpenAI's TF1 code wrote them."""
    import tensorflow as tf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hparams.json").write_text(json.dumps(hparams, indent=2))
    with tf.Graph().as_default():
        variables = [tf.compat.v1.Variable(value, name=name) for name, value in tensors.items()]
        saver = tf.compat.v1.train.Saver(variables)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(folder / "model.ckpt"))
    return folder


def hf_config(hparams: dict) -> dict:
    """A config.json like the Hub's GPT-2 ones (the fields a loader reads, plus a few it must ignore)."""
    return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "layer_norm_epsilon": 1e-05, "n_ctx": hparams["n_ctx"], "n_positions": hparams["n_ctx"],
            "n_embd": hparams["n_embd"], "n_head": hparams["n_head"], "n_layer": hparams["n_layer"],
            "vocab_size": hparams["n_vocab"], "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}


def write_hf_checkpoint(folder, hparams: dict, hf_tensors: dict[str, np.ndarray], *, config_json: bool = True) -> Path:
    """config.json + model.safetensors (written by the safetensors package itself, metadata like the Hub's)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config_json:
        (folder / "config.json").write_text(json.dumps(hf_config(hparams), indent=2))
    save_file({k: np.ascontiguousarray(v) for k, v in hf_tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def reference_logits(tensors: dict[str, np.ndarray], hparams: dict, idx: np.ndarray) -> np.ndarray:
    """(B, T) ids -> (B, T, V) logits in float64, computed on OpenAI's layout (x @ w with w (in, out))."""
    w = {name: value.astype(np.float64) for name, value in tensors.items()}
    C, H = hparams["n_embd"], hparams["n_head"]
    D = C // H

    def norm(x, g, b):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-5) * g + b

    def conv1d(x, prefix):
        return x @ w[prefix + "/w"][0] + w[prefix + "/b"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    B, T = idx.shape
    x = w["model/wte"][idx] + w["model/wpe"][:T]                     # (B, T, C)
    mask = np.triu(np.full((T, T), -np.inf), k=1)                      # future positions get -inf
    for i in range(hparams["n_layer"]):
        h = f"model/h{i}"
        qkv = conv1d(norm(x, w[h + "/ln_1/g"], w[h + "/ln_1/b"]), h + "/attn/c_attn")   # (B, T, 3C)
        q, k, v = (part.reshape(B, T, H, D).transpose(0, 2, 1, 3) for part in np.split(qkv, 3, axis=-1))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + mask    # (B, H, T, T)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        att = scores / scores.sum(-1, keepdims=True)
        context = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + conv1d(context, h + "/attn/c_proj")
        hidden = gelu(conv1d(norm(x, w[h + "/ln_2/g"], w[h + "/ln_2/b"]), h + "/mlp/c_fc"))
        x = x + conv1d(hidden, h + "/mlp/c_proj")
    x = norm(x, w["model/ln_f/g"], w["model/ln_f/b"])
    return x @ w["model/wte"].T

"""What `gpt2 bench` times: each component and the whole model, as one zero-argument function per backend.

Backends:
    numpy        npgpt (hand-written forward and backward)
    torch        torchgpt, eager, with the explicit attention (the parity-tested twin)
    torch_sdpa   torchgpt with F.scaled_dot_product_attention (only where attention is involved)
    hf           Hugging Face transformers' GPT2LMHeadModel (model forward and train step; optional)

Components (at width C, H heads, on a (B, T, C) input): layernorm, gelu (on (B, T, 4C)), softmax (on the
attention weights' shape (B, H, T, T)), attention (causal multi-head, with the q/k/v and output projections),
feedforward, block. "forward" in torch records the autograd graph, as in training (the NumPy forward
also builds its caches); "backward" is the gradient of every input and parameter for a fixed upstream
gradient (NumPy: *_backward from a saved cache; torch: torch.autograd.grad with retain_graph).
Components run without dropout: the comparison is of the computation.

Step components, the rest of a train step, timed at the model's full vocabulary (cases at the end of this
file): embedding (token + position lookup; backward: the scatter-add of the token rows), head_ce (the tied
output head's matmul and the mean cross-entropy; backward: dx and the head's dW) and adamw (one update of
every parameter; direction "update"). With L blocks, a train step is about
    embedding + L * block + layernorm (the final norm) + head_ce  (forward and backward each) + adamw
(report.step_accounting_table puts the sum beside the measured train step).

Model tasks: "forward" is npgpt.model.forward (which builds the caches a backward needs) against torch
under no_grad, eval mode; "infer" is npgpt.model.infer (no cache, activations freed as it goes) against the
same torch no_grad forward; "train_step" is forward, cross-entropy, backward and AdamW (dropout as the
config says).
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

COMPONENTS = ("layernorm", "gelu", "softmax", "attention", "feedforward", "block")
ATTENTION_COMPONENTS = ("attention", "block")      # the ones torch_sdpa changes
# The rest of a train step, so the component table adds up to it: timed at the model section's B and T
# only (their cost is linear in B T, or independent of it for AdamW), at the model's full vocabulary.
STEP_COMPONENTS = ("embedding", "head_ce", "adamw")
MODEL_TASKS = ("forward", "infer", "train_step")


def size_config(name: str, drop_rate: float | None):
    """A preset, or a custom ladder size 'C<width>-L<layers>' (GPT-2 vocabulary, qkv bias, 64-wide heads).

    Every section of `gpt2 bench` (decode included) resolves its model through here, so a name that the
    up-front check accepted cannot fail later in another section.
    """
    from gptcore.config import ConfigError, get_config

    ladder = re.fullmatch(r"C(\d+)-L(\d+)", name)
    if ladder:
        width, layers = int(ladder[1]), int(ladder[2])
        config = get_config("gpt2-small", emb_dim=width, n_layers=layers, n_heads=max(1, width // 64))
    else:
        try:
            config = get_config(name)
        except ConfigError as error:
            raise ConfigError(f"{error}; or a ladder size like C256-L4 (width 256, 4 layers)") from None
    return config if drop_rate is None else config.replace(drop_rate=drop_rate)


def model_flops(config, batch_size: int, seq_len: int, *, train: bool) -> float:
    """Model FLOPs of one forward (or train step) of GPT `config` on batch_size sequences of seq_len tokens.

    Counted as matmul multiply-adds times 2 (the usual convention; elementwise work is left out):
        N_mm    = L (4 C^2 + 2 C F) + V C          weights used in matmuls: q, k, v, out_proj, fc1, fc2, head
        forward = 2 N_mm B T  +  4 L B T^2 C       projections, plus q k^T and weights v over all T x T pairs
        train   = 3 forward                        the backward needs two matmuls per forward matmul
    i.e. 6 N_mm + 12 L T C FLOPs per trained token. The causal mask is not subtracted (both libraries
    compute the full T x T scores, except SDPA kernels that skip masked blocks).
    """
    L, C, F, V = config.n_layers, config.emb_dim, config.ff_dim, config.vocab_size
    n_matmul = L * (4 * C * C + 2 * C * F) + V * C
    forward = 2.0 * n_matmul * batch_size * seq_len + 4.0 * L * batch_size * seq_len ** 2 * C
    return 3.0 * forward if train else forward


def min_matmul_flops(config, batch_size: int, seq_len: int, *, train: bool) -> float:
    """The fewest matmul FLOPs any implementation of a GPT-2 forward (or train step) needs: model_flops with
    only the causal half of the attention's T x T scores and weights (entries above the diagonal are 0 and
    can be skipped; the diagonal and below cannot), everything else as counted there. A train step is again
    3 forwards: the backward of every matmul needs two. The plain-script benchmark divides it by the
    fastest GEMM rate measured on the machine for the lowest time any code could reach."""
    L, C = config.n_layers, config.emb_dim
    attention_full = 4.0 * L * batch_size * seq_len ** 2 * C
    attention_causal = 2.0 * L * batch_size * seq_len * (seq_len + 1) * C       # T (T + 1) / 2 pairs, x 2
    forward = model_flops(config, batch_size, seq_len, train=False) - attention_full + attention_causal
    return 3.0 * forward if train else forward


def linear_gemm_shapes(config, rows: int) -> list[tuple[int, int, int]]:
    """The (M, K, N) GEMMs of GPT-2's linear layers over `rows` token rows: per layer (out, in) the forward
    x W^T (rows, in, out), the input gradient dout W (rows, out, in) and the weight gradient dout^T x
    (out, rows, in); q, k, v and out_proj are (C, C), fc1 (F, C), fc2 (C, F), the head (V, C)."""
    C, F, V = config.emb_dim, config.ff_dim, config.vocab_size
    shapes = []
    for out, inp in ((C, C), (F, C), (C, F), (V, C)):
        shapes += [(rows, inp, out), (rows, out, inp), (out, rows, inp)]
    return shapes


def component_config(config, seq_len: int):
    """A one-block copy of `config` (small vocabulary) whose context fits seq_len, without dropout."""
    return config.replace(n_layers=1, vocab_size=16, context_length=max(seq_len, config.context_length), drop_rate=0.0)


def _numpy_block_params(config, seed: int) -> dict:
    from npgpt.model import init_params
    from gptcore.params import subdict

    return subdict(init_params(config, seed=seed), "blocks.0.")


def _inputs(component: str, config, batch_size: int, seq_len: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(x, dout) float32 for a component: (B, T, C), (B, T, F) for GELU, (B, H, T, T) for softmax."""
    B, T, C, H = batch_size, seq_len, config.emb_dim, config.n_heads
    shape = {"gelu": (B, T, config.ff_dim), "softmax": (B, H, T, T)}.get(component, (B, T, C))
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)


def numpy_component(component: str, config, x: np.ndarray, dout: np.ndarray, p: dict):
    """(forward_fn, backward_fn) for npgpt; backward_fn reuses the cache of one forward."""
    from npgpt import attention, block, feedforward, gelu, layernorm, softmax
    from gptcore.params import subdict

    forwards = {
        "layernorm": lambda: layernorm.layernorm_forward(x, p["norm1.scale"], p["norm1.shift"]),
        "gelu": lambda: gelu.gelu_forward(x),
        "softmax": lambda: softmax.softmax_forward(x, axis=-1),
        "attention": lambda: attention.multihead_attention_forward(x, subdict(p, "att."), config.n_heads),
        "feedforward": lambda: feedforward.feedforward_forward(x, subdict(p, "ff.")),
        "block": lambda: block.block_forward(x, p, config),
    }
    backwards = {
        "layernorm": layernorm.layernorm_backward, "gelu": gelu.gelu_backward, "softmax": softmax.softmax_backward,
        "attention": attention.multihead_attention_backward, "feedforward": feedforward.feedforward_backward,
        "block": block.block_backward,
    }
    forward = forwards[component]
    _, cache = forward()
    backward = backwards[component]
    return forward, (lambda: backward(dout, cache))


def torch_component(component: str, config, x: np.ndarray, dout: np.ndarray, p: dict, *, use_sdpa: bool):
    """(forward_fn, backward_fn) for torchgpt with the same weights; backward_fn = torch.autograd.grad."""
    import torch

    from torchgpt.block import TransformerBlock
    from torchgpt.gelu import gelu

    block = TransformerBlock(config, use_sdpa=use_sdpa)
    block.load_state_dict({name: torch.from_numpy(value) for name, value in p.items()})
    block.eval()                                     # no dropout (drop_rate is 0 anyway)
    modules = {"layernorm": block.norm1, "attention": block.att, "feedforward": block.ff, "block": block}
    if component in modules:
        module = modules[component]
        run, weights = module, list(module.parameters())
    elif component == "gelu":
        run, weights = gelu, []
    else:
        run, weights = (lambda t: torch.softmax(t, dim=-1)), []
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tdout = torch.from_numpy(dout.copy())
    inputs = [tx] + weights
    out = run(tx)

    def backward():
        return torch.autograd.grad(out, inputs, tdout, retain_graph=True)

    return (lambda: run(tx)), backward


def component_cases(component: str, config, batch_size: int, seq_len: int, *, seed: int = 0) -> dict:
    """{"forward": {backend: fn}, "backward": {backend: fn}} for one component at one shape
    ({"update": {backend: fn}} for adamw)."""
    if component in STEP_COMPONENTS:
        return step_component_cases(component, config, batch_size, seq_len, seed=seed)
    config = component_config(config, seq_len)
    rng = np.random.default_rng(seed)
    x, dout = _inputs(component, config, batch_size, seq_len, rng)
    p = _numpy_block_params(config, seed)
    cases: dict[str, dict[str, Callable]] = {"forward": {}, "backward": {}}
    backends = {"numpy": None, "torch": False}
    if component in ATTENTION_COMPONENTS:
        backends["torch_sdpa"] = True
    for backend, use_sdpa in backends.items():
        if backend == "numpy":
            forward, backward = numpy_component(component, config, x, dout, p)
        else:
            forward, backward = torch_component(component, config, x, dout, p, use_sdpa=use_sdpa)
        cases["forward"][backend] = forward
        cases["backward"][backend] = backward
    return cases


# --- the rest of a train step: embeddings, output head + loss, optimizer ------------------------------

def step_component_cases(component: str, config, batch_size: int, seq_len: int, *, seed: int = 0) -> dict:
    """Cases of embedding, head_ce or adamw at the full `config` (its vocabulary; its context stretched to
    seq_len), without dropout; the same directions and backends as component_cases."""
    config = config.replace(context_length=max(seq_len, config.context_length), drop_rate=0.0)
    if component == "adamw":
        return {"update": adamw_cases(config, seed=seed)[0]}
    makers = {"embedding": (numpy_embedding, torch_embedding), "head_ce": (numpy_head_ce, torch_head_ce)}
    if component not in makers:
        raise ValueError(f"unknown step component {component!r}; choose from {', '.join(STEP_COMPONENTS)}")
    rng = np.random.default_rng(seed)
    B, T, C, V = batch_size, seq_len, config.emb_dim, config.vocab_size
    idx = rng.integers(0, V, (B, T))                                   # token ids, or the targets of head_ce
    weights = {"tok": (rng.standard_normal((V, C), dtype=np.float32) * 0.02),
               "pos": (rng.standard_normal((config.context_length, C), dtype=np.float32) * 0.02)}
    x = rng.standard_normal((B, T, C), dtype=np.float32)              # head_ce's input; embedding's dout
    cases: dict[str, dict[str, Callable]] = {"forward": {}, "backward": {}}
    for backend, make in zip(("numpy", "torch"), makers[component]):
        cases["forward"][backend], cases["backward"][backend] = make(idx, x, weights)
    return cases


def numpy_embedding(idx, dout, weights):
    """(forward, backward) of tok_emb[idx] + pos_emb[:T] as npgpt's trunk runs it. The backward adds the token
    part into a (V, C) array standing for the tied head's gradient, as npgpt.model.trunk_backward does."""
    from npgpt.embedding import embedding_backward, embedding_forward, pos_embedding_backward, pos_embedding_forward

    head_grad = np.zeros_like(weights["tok"])                          # (V, C); grows with every call, harmless

    def forward():
        tok, tok_cache = embedding_forward(weights["tok"], idx)         # (B, T, C)
        pos, pos_cache = pos_embedding_forward(weights["pos"], idx.shape[1])   # (T, C)
        tok += pos
        return tok, (tok_cache, pos_cache)

    _, (tok_cache, pos_cache) = forward()

    def backward():
        return (embedding_backward(dout, tok_cache, dweight=head_grad),
                pos_embedding_backward(dout, pos_cache))

    return forward, backward


def torch_embedding(idx, dout, weights):
    """(forward, backward) of torchgpt's tok_emb(idx) + pos_emb(arange(T)); the backward is autograd's dense
    (V, C) gradient (the train step then sums it with the tied head's)."""
    import torch
    import torch.nn.functional as F

    tok = torch.from_numpy(weights["tok"].copy()).requires_grad_(True)
    pos = torch.from_numpy(weights["pos"].copy()).requires_grad_(True)
    tidx, positions = torch.from_numpy(idx), torch.arange(idx.shape[1])
    tdout = torch.from_numpy(dout.copy())

    def forward():
        return F.embedding(tidx, tok) + F.embedding(positions, pos)     # (B, T, C)

    out = forward()
    return forward, (lambda: torch.autograd.grad(out, [tok, pos], tdout, retain_graph=True))


def numpy_head_ce(targets, x, weights):
    """(forward, backward) of logits = x W^T and the mean cross-entropy, as npgpt's train step runs them.

    The forward is the head's matmul plus npgpt's fused loss, which already turns the logits buffer into
    dlogits (one pass over (B T, V) fewer); the backward is the head's two matmuls: dx = dlogits W and the
    tied head's dW = dlogits^T x. torch does the softmax gradient in its backward instead, so compare
    forward + backward of this component, not each direction alone.
    """
    from npgpt.linear import linear_backward, linear_forward
    from npgpt.loss import cross_entropy_loss_and_grad

    weight = weights["tok"]                                             # (V, C), tied: out_head is tok_emb

    def forward():
        logits, head_cache = linear_forward(x, weight)                  # (B, T, V)
        loss, dlogits = cross_entropy_loss_and_grad(logits, targets, overwrite_logits=True)
        return loss, dlogits, head_cache

    _, dlogits, head_cache = forward()

    def backward():
        dx, dweight, _ = linear_backward(dlogits, head_cache)           # (B, T, C), (V, C)
        return dx, dweight

    return forward, backward


def torch_head_ce(targets, x, weights):
    """(forward, backward) of torchgpt's out_head (F.linear, no bias) and F.cross_entropy, as its train step
    runs them; the backward is autograd's dx and dW (the softmax gradient included)."""
    import torch
    import torch.nn.functional as F

    weight = torch.from_numpy(weights["tok"].copy()).requires_grad_(True)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ttargets = torch.from_numpy(targets).reshape(-1)

    def forward():
        logits = F.linear(tx, weight)                                   # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ttargets)

    loss = forward()
    return forward, (lambda: torch.autograd.grad(loss, [tx, weight], retain_graph=True))


def adamw_cases(config, *, seed: int = 0):
    """({"numpy": fn, "torch": fn}, numpy params, torch params): one AdamW update over every parameter of a
    model of `config` (124M at gpt2-small), as each train step runs it: npgpt.optim.AdamW, and
    torch.optim.AdamW with torch's default implementation (on CPU torch picks neither foreach nor fused)
    and the same param groups (weight decay on matrices only; the tied head counted once).

    Both read the same fixed gradients (no copy: they are only read); each updates its own parameters.
    """
    import torch

    from npgpt.model import init_params
    from npgpt.optim import AdamW
    from gptcore.params import unique_arrays

    params = init_params(config, seed=seed)
    rng = np.random.default_rng(seed + 1)
    unique = dict(unique_arrays(params))                                # the tied head once, as both optimizers see it
    grads = {name: rng.standard_normal(p.shape, dtype=np.float32) * np.float32(1e-3) for name, p in unique.items()}
    numpy_optimizer = AdamW()
    torch_params = {name: torch.nn.Parameter(torch.from_numpy(p.copy())) for name, p in unique.items()}
    for name, p in torch_params.items():
        p.grad = torch.from_numpy(grads[name])
    groups = [{"params": [p for p in torch_params.values() if p.ndim >= 2], "weight_decay": 0.1},
              {"params": [p for p in torch_params.values() if p.ndim < 2], "weight_decay": 0.0}]
    torch_optimizer = torch.optim.AdamW(groups, lr=numpy_optimizer.lr, betas=numpy_optimizer.betas,
                                        eps=numpy_optimizer.eps)
    fns = {"numpy": lambda: numpy_optimizer.step(unique, grads), "torch": torch_optimizer.step}
    return fns, unique, torch_params


# --- whole models ---------------------------------------------------------------------------------

def set_sdpa(torch_model, use_sdpa: bool) -> None:
    """Switches every attention layer of a torchgpt.GPTModel between the explicit path and SDPA."""
    for block in torch_model.blocks:
        block.att.use_sdpa = use_sdpa


def make_hf_model(config, seed: int = 0):
    """transformers' GPT2LMHeadModel with the same sizes and dropout as `config` (random weights)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.emb_dim,
                           n_layer=config.n_layers, n_head=config.n_heads, resid_pdrop=config.drop_rate,
                           embd_pdrop=config.drop_rate, attn_pdrop=config.drop_rate)
    return GPT2LMHeadModel(hf_config)


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class ModelCases:
    """The model forward and train step of one config and batch shape, for every backend.

    Holds one npgpt parameter dict, one torchgpt model (shared by torch and torch_sdpa, switched with
    set_sdpa before each call) and optionally one Hugging Face model, each with its own AdamW.
    """

    def __init__(self, config, batch_size: int, seq_len: int, *, use_hf: bool, seed: int = 0):
        import torch

        from npgpt import model as npmodel
        from npgpt.optim import AdamW
        from torchgpt import GPTModel, load_numpy_params
        from torchgpt.optim import make_adamw

        self.config = config.replace(context_length=max(seq_len, config.context_length))
        self.batch_size, self.seq_len = batch_size, seq_len
        rng = np.random.default_rng(seed)
        self.idx = rng.integers(0, config.vocab_size, (batch_size, seq_len))
        self.targets = rng.integers(0, config.vocab_size, (batch_size, seq_len))
        self.tidx, self.ttargets = torch.from_numpy(self.idx), torch.from_numpy(self.targets)
        self.params = npmodel.init_params(self.config, seed=seed)
        self.n_params = npmodel.count_params(self.params)
        self.numpy_optimizer = AdamW()
        self.dropout_rng = np.random.default_rng(seed + 1)
        self.torch_model = load_numpy_params(GPTModel(self.config, use_sdpa=False), self.params)
        self.torch_optimizer = make_adamw(self.torch_model)
        self.hf_model = make_hf_model(self.config, seed) if use_hf else None
        if self.hf_model is not None:
            self.hf_optimizer = torch.optim.AdamW(self.hf_model.parameters(), lr=4e-4, weight_decay=0.1)

    def backends(self) -> list[str]:
        return ["numpy", "torch", "torch_sdpa"] + (["hf"] if self.hf_model is not None else [])

    def flops(self, task: str) -> float:
        """Model FLOPs of "forward", "infer" (the same count: the causal half infer skips is not subtracted)
        or "train_step"."""
        return model_flops(self.config, self.batch_size, self.seq_len, train=task == "train_step")

    # numpy
    def numpy_forward(self):
        from npgpt import model as npmodel
        return npmodel.forward(self.params, self.idx, self.config)[0]

    def numpy_infer(self):
        from npgpt import model as npmodel
        return npmodel.infer(self.params, self.idx, self.config)

    def numpy_train_step(self):
        from npgpt import model as npmodel
        train = self.config.drop_rate > 0
        loss, grads = npmodel.loss_and_grads(self.params, self.idx, self.targets, self.config, train=train,
                                             rng=self.dropout_rng)
        self.numpy_optimizer.step(self.params, grads)
        return loss

    # torch (eager or SDPA) and Hugging Face
    def _torch_forward(self, model, hf: bool):
        import torch
        model.eval()
        with torch.no_grad():
            out = model(self.tidx)
        return out.logits if hf else out

    def _torch_train_step(self, model, optimizer, hf: bool):
        import torch.nn.functional as F
        model.train()
        optimizer.zero_grad(set_to_none=True)
        logits = model(self.tidx)
        logits = logits.logits if hf else logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.ttargets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss.item()

    def functions(self, task: str) -> dict[str, Callable]:
        """backend -> zero-argument function for task "forward" or "train_step"."""
        def with_sdpa(flag, fn):
            def run():
                set_sdpa(self.torch_model, flag)
                return fn()
            return run

        if task in ("forward", "infer"):
            fns = {"numpy": self.numpy_forward if task == "forward" else self.numpy_infer,
                   "torch": with_sdpa(False, lambda: self._torch_forward(self.torch_model, False)),
                   "torch_sdpa": with_sdpa(True, lambda: self._torch_forward(self.torch_model, False))}
            if self.hf_model is not None:
                fns["hf"] = lambda: self._torch_forward(self.hf_model, True)
        elif task == "train_step":
            fns = {"numpy": self.numpy_train_step,
                   "torch": with_sdpa(False, lambda: self._torch_train_step(self.torch_model, self.torch_optimizer, False)),
                   "torch_sdpa": with_sdpa(True, lambda: self._torch_train_step(self.torch_model, self.torch_optimizer,
                                                                                False))}
            if self.hf_model is not None:
                fns["hf"] = lambda: self._torch_train_step(self.hf_model, self.hf_optimizer, True)
        else:
            raise ValueError(f"unknown model task {task!r}; use one of {', '.join(MODEL_TASKS)}")
        return fns

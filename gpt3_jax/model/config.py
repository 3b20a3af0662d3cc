"""The GPT-3 model configuration: one frozen dataclass, no gin inside the model.

Sizes follow Table 2.1 of Brown et al. (2020); see gin_configs/models/ for the eight paper sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

VOCAB_MULTIPLE = 128
LORA_TARGETS = ("qkv", "attn_out", "mlp_in", "mlp_out")
ATTENTION_PATTERNS = ("dense", "alternating")  # alternating: dense, local, dense, local, ...
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "save_dots", "save_attention_mlp_outputs")
STORAGE_DTYPES = ("float32", "bfloat16")  # param_dtype and logits_dtype
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # dtype; "auto": by platform (resolve_dtype)


def resolve_dtype(name: str, platform: str) -> str:
  """The compute dtype `name` means on `platform` (jax.default_backend(): 'cpu', 'gpu', 'tpu'): 'auto' is float32
  on CPU (XLA:CPU runs bfloat16 matmuls no faster than float32, docs/benchmarks.md) and bfloat16 on accelerators;
  any other name is itself."""
  if name != "auto":
    return name
  return "float32" if platform == "cpu" else "bfloat16"


def pad_vocab(vocab_size: int, multiple: int = VOCAB_MULTIPLE) -> int:
  """Rounds the tokenizer's vocab up to a multiple of `multiple` (50257 -> 50304)."""
  return -(-vocab_size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a GPT-3 decoder.

  Attributes:
    vocab_size: the tokenizer's real vocabulary; the embedding is padded to `padded_vocab_size` and padded
      entries are masked out of the softmax, so they can never be sampled or enter the loss.
    n_ctx: context length (size of the learned position table).
    d_model: residual width.
    n_layers: number of Transformer blocks.
    n_heads: attention heads.
    d_head: width of one head. n_heads * d_head may differ from d_model (the paper's printed XL and 13B rows).
    d_ff: MLP hidden width; None means 4 * d_model.
    layer_norm_epsilon: LayerNorm epsilon (GPT-2: 1e-5).
    init_std: std of the normal init of every weight matrix and embedding (GPT-2: 0.02).
    attention_pattern: "dense" (every layer dense) or "alternating" (dense, local band, dense, ... as the paper).
    local_window: band width of the local layers: query i sees key j iff 0 <= i - j < local_window.
    attention_impl: "xla" (portable), "cudnn" (jax.nn.dot_product_attention on GPU), "splash" (Pallas on TPU).
    attention_block: query block of the xla implementation. Each block attends only the key blocks its causal
      band reaches, so fully masked blocks cost nothing (a local layer's work grows with window, not T).
      0, or a sequence length that is not a larger multiple of it, computes one masked block.
    The precision policy is three dtypes (MaxText's weight_dtype / dtype / logits in float32):
    param_dtype: storage dtype of the parameters, hence of their gradients and Adam moments: "float32" (the
      default, what training should use) or "bfloat16" (half the memory for sampling, scoring or evaluating a
      big model; training then rounds every update to bfloat16). LoRA adapters and a classifier's score head
      are always float32 (they are what a fine-tune of a bfloat16 base trains).
    dtype: compute dtype of activations and matmul inputs: "auto" (the default: float32 on CPU, bfloat16 on GPU
      and TPU, `resolve_dtype`), "float32", "bfloat16" or "float16". Attention softmax and LayerNorm statistics
      accumulate in float32 whatever it is.
    logits_dtype: dtype of the LM head's output [B, T, vocab]: "float32" (the default) or "bfloat16" (halves the
      largest activation at a big vocabulary). The loss, log-softmax and sampling always upcast to float32.
    remat_policy: one of REMAT_POLICIES; "none" disables rematerialization.
    scan_layers: scan over the layer stack (one compiled body); False unrolls (for debugging).
    scan_unroll: layers per scan iteration (params keep their stacked layout). 1 keeps compile time flat in
      depth; on CPU, unrolling the whole stack removes the loop's per-layer slicing overhead (~10% of a step).
  """

  vocab_size: int = 50257
  n_ctx: int = 2048
  d_model: int = 768
  n_layers: int = 12
  n_heads: int = 12
  d_head: int = 64
  d_ff: Optional[int] = None
  layer_norm_epsilon: float = 1e-5
  init_std: float = 0.02
  attention_pattern: str = "dense"
  local_window: int = 256
  attention_impl: str = "xla"
  attention_block: int = 128
  param_dtype: str = "float32"
  dtype: str = "auto"
  logits_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = True
  scan_unroll: int = 1
  # LoRA (gpt3_jax/model/lora.py): rank > 0 adds a low-rank update scale * A @ B (A [in, rank], B [rank, out],
  # B zero-initialized, scale = lora_alpha / lora_rank) beside each targeted projection: 'qkv', 'attn_out',
  # 'mlp_in', 'mlp_out'. Training then updates only the adapters.
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0  # dropout on each adapter's input while training (a 'dropout' rng is passed)
  lora_targets: Tuple[str, ...] = ("qkv", "attn_out", "mlp_in", "mlp_out")
  # A classification head (fine-tuning, gpt3_jax/finetune/classify_data.py): non-empty adds `score`
  # [d_model, len(class_labels)] read at each row's last non-padding token; the LM head stays.
  class_labels: Tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))  # JSON gives a list; configs are hashed
    object.__setattr__(self, "class_labels", tuple(str(x) for x in self.class_labels))
    checks = [
        (self.vocab_size > 0, f"vocab_size must be positive, got {self.vocab_size}"),
        (self.n_layers > 0 and self.d_model > 0 and self.n_heads > 0 and self.d_head > 0,
         "n_layers, d_model, n_heads and d_head must all be positive"),
        (self.attention_pattern in ATTENTION_PATTERNS,
         f"attention_pattern={self.attention_pattern!r}; choose one of {ATTENTION_PATTERNS}"),
        (self.attention_impl in ATTENTION_IMPLS,
         f"attention_impl={self.attention_impl!r}; choose one of {ATTENTION_IMPLS}"),
        (self.remat_policy in REMAT_POLICIES,
         f"remat_policy={self.remat_policy!r}; choose one of {REMAT_POLICIES}"),
        (self.dtype in COMPUTE_DTYPES, f"dtype={self.dtype!r}; choose one of {COMPUTE_DTYPES}"),
        (self.param_dtype in STORAGE_DTYPES, f"param_dtype={self.param_dtype!r}; choose one of {STORAGE_DTYPES}"),
        (self.logits_dtype in STORAGE_DTYPES,
         f"logits_dtype={self.logits_dtype!r}; choose one of {STORAGE_DTYPES}"),
        (self.attention_impl != "cudnn" or self.dtype in ("auto", "bfloat16", "float16"),
         f"attention_impl='cudnn' runs in bfloat16 or float16 only, got dtype={self.dtype!r}; set "
         f"ModelConfig.dtype='bfloat16' (or attention_impl='xla' for float32)"),
        (self.local_window > 0, f"local_window must be positive, got {self.local_window}"),
        (self.attention_block >= 0, f"attention_block must be >= 0 (0: one block), got {self.attention_block}"),
        (self.scan_unroll >= 1, f"scan_unroll must be >= 1, got {self.scan_unroll}"),
        (self.lora_rank >= 0, f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}"),
        (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), e.g. 0.05, got {self.lora_dropout}"),
        (set(self.lora_targets) <= set(LORA_TARGETS),
         f"lora_targets={self.lora_targets!r}; choose from {LORA_TARGETS}"),
        (len(set(self.class_labels)) == len(self.class_labels) and len(self.class_labels) != 1,
         f"class_labels={self.class_labels!r} must be distinct, and at least two (or none)"),
        (self.attention_pattern != "alternating" or self.n_layers % 2 == 0,
         f"attention_pattern='alternating' needs an even n_layers (dense/local pairs), got {self.n_layers}"),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f"ModelConfig: {message}")

  @property
  def padded_vocab_size(self) -> int:
    return pad_vocab(self.vocab_size)

  @property
  def compute_dtype(self) -> str:
    """`dtype` resolved for the backend JAX runs on (what the model computes in)."""
    import jax  # pylint: disable=import-outside-toplevel
    return resolve_dtype(self.dtype, jax.default_backend())

  def resolved(self, platform: str) -> "ModelConfig":
    """This config with `dtype` resolved for `platform` (a plan or compile for a chip this host is not)."""
    return self.replace(dtype=resolve_dtype(self.dtype, platform))

  @property
  def num_labels(self) -> int:
    return len(self.class_labels)

  @property
  def attn_width(self) -> int:
    return self.n_heads * self.d_head

  @property
  def mlp_width(self) -> int:
    return self.d_ff if self.d_ff is not None else 4 * self.d_model

  @property
  def layer_windows(self) -> Tuple[Optional[int], ...]:
    """Per-layer attention window: None for dense, an int for a local band."""
    if self.attention_pattern == "dense":
      return (None,) * self.n_layers
    return tuple(None if i % 2 == 0 else self.local_window for i in range(self.n_layers))

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def param_counts(cfg: ModelConfig, *, padded: bool = False) -> dict:
  """Closed-form parameter counts (total and non-embedding), matching the Flax model exactly.

  `padded=False` counts the real vocabulary (as the paper does); `padded=True` counts the stored table.
  """
  d, a, f = cfg.d_model, cfg.attn_width, cfg.mlp_width
  per_layer = (
      2 * 2 * d  # two LayerNorms (scale + bias)
      + d * 3 * a + 3 * a  # fused qkv projection + bias
      + a * d + d  # attention output projection + bias
      + d * f + f  # MLP in
      + f * d + d  # MLP out
  )
  if cfg.lora_rank:  # adapters A [in, r] and B [r, out] beside each targeted projection
    sizes = {"qkv": (d, 3 * a), "attn_out": (a, d), "mlp_in": (d, f), "mlp_out": (f, d)}
    per_layer += sum(cfg.lora_rank * sum(sizes[t]) for t in cfg.lora_targets)
  vocab = cfg.padded_vocab_size if padded else cfg.vocab_size
  embedding = vocab * d + cfg.n_ctx * d
  non_embedding = cfg.n_layers * per_layer + 2 * d + d * cfg.num_labels  # + final LayerNorm (+ the head)
  return {"params": non_embedding + embedding, "non_embedding_params": non_embedding,
          "embedding_params": embedding}


def flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
  """Training model FLOPs per token by the PaLM formula 6N + 12*L*H*Q*T (no rematerialization).

  N counts non-embedding parameters plus the (tied) output projection, which is a real matmul per token.
  The attention term uses the full causal T, as PaLM does, also for local layers (model FLOPs, not work done).
  A LoRA model trains only its adapters: the frozen base costs 4 FLOPs per parameter and token (forward and the
  input gradient; no weight gradient), the adapters 6.
  """
  t = cfg.n_ctx if seq_len is None else seq_len
  # A classifier (class_labels) reads its head at one token per row instead of the LM head at every token.
  n = param_counts(cfg)["non_embedding_params"] + (0 if cfg.class_labels else cfg.vocab_size * cfg.d_model)
  attention = 12.0 * cfg.n_layers * cfg.n_heads * cfg.d_head * t
  if cfg.lora_rank:
    adapters = (param_counts(cfg)["non_embedding_params"]
                - param_counts(cfg.replace(lora_rank=0))["non_embedding_params"])
    return 4.0 * (n - adapters) + 6.0 * adapters + attention
  return 6.0 * n + attention

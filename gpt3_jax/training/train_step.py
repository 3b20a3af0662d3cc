"""Pure, jit-able step functions: the loss, one optimizer step (with gradient accumulation), evaluation."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gpt3_jax.model.config import ModelConfig
from gpt3_jax.model.transformer import GPT
from gpt3_jax.parallel import mesh as mesh_lib
from gpt3_jax.training import optimizer as optimizer_lib
from gpt3_jax.training import row_format
from gpt3_jax.training.train_state import TrainState


DROPOUT_SEED = 0  # LoRA dropout's masks: fold_in(key(DROPOUT_SEED), step [, microbatch])


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Sum of the scored tokens' negative log-likelihoods and their count (float32); `weights` [B, T] are 1 for a
  scored token and 0 otherwise. Logits stored in bfloat16 (ModelConfig.logits_dtype) are upcast first."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  true_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((logz - true_logit) * weights), jnp.sum(weights)


def loss_fn(params, cfg: ModelConfig, batch: jax.Array, rng: Optional[jax.Array] = None
            ) -> Tuple[jax.Array, jax.Array]:
  """batch: int32 [B, T + 1] windows; inputs are batch[:, :-1], targets batch[:, 1:]. A token stored as
  -(id + 1) is `id` whose prediction is not scored (fine-tuning's prompts and padding, training/row_format.py);
  pretraining batches have none, and every target counts. A classifier (cfg.class_labels) sums the
  cross-entropy of its head over the rows instead: (total, number of rows). `rng` turns on LoRA dropout."""
  if cfg.class_labels:
    return classifier_loss(params, cfg, batch, rng)[:2]
  tokens = jnp.where(batch < 0, -batch - 1, batch)
  logits = GPT(cfg).apply({"params": params}, tokens[:, :-1], rngs=_rngs(cfg, rng))
  return cross_entropy(logits, tokens[:, 1:], (batch[:, 1:] >= 0).astype(jnp.float32))


def has_dropout(cfg: ModelConfig) -> bool:
  return bool(cfg.lora_rank and cfg.lora_dropout)


def _rngs(cfg: ModelConfig, rng):
  return {"dropout": rng} if rng is not None and has_dropout(cfg) else {}


def classifier_outputs(params, cfg: ModelConfig, batch: jax.Array, rng=None) -> Tuple[jax.Array, jax.Array]:
  """(class logits [B, num_labels], class indices [B]) of classification rows (row_format.py)."""
  tokens, last, labels = row_format.classification_rows(batch, cfg.vocab_size)
  return GPT(cfg).apply({"params": params}, tokens, last, method=GPT.classify, rngs=_rngs(cfg, rng)), labels


def classifier_loss(params, cfg: ModelConfig, batch: jax.Array, rng=None):
  """(summed cross-entropy over the rows, row count, class logits, class indices) of classification rows."""
  logits, labels = classifier_outputs(params, cfg, batch, rng)
  return (*cross_entropy(logits, labels, jnp.ones(labels.shape, jnp.float32)), logits, labels)


def make_train_step(cfg: ModelConfig, tx: optax.GradientTransformationExtraArgs, num_microbatches: int = 1,
                    stop_gradients: Callable = lambda params: params
                    ) -> Callable[[TrainState, jax.Array, jax.Array], Tuple[TrainState, Dict]]:
  """Returns step(state, batch, learning_rate) -> (state, metrics).

  With num_microbatches > 1 the batch is split along rows and gradients are accumulated in a scan: numerically
  the large-batch gradient, at 1/m of the activation memory. A step whose loss or gradient norm is not finite
  changes nothing but the step counter (params and optimizer state are kept) and reports skipped = 1.
  `tx` (optimizer.make_optimizer) receives the step's gradient norm as update(..., grad_norm=) for its clipping.
  `stop_gradients(params)` puts frozen parameters behind stop_gradient (optimizer.stop_frozen_gradients), so the
  gradient norm and its clipping are over the trained ones.
  """

  def grads_of(params, batch, rng):
    def mean_loss(p):
      total, count = loss_fn(stop_gradients(p), cfg, batch, rng)
      return total / count
    return jax.value_and_grad(mean_loss)(params)

  def summed_grads_of(params, batch, rng):
    """(total NLL, token count, gradient of the total): microbatches add these, then divide once, so a
    fine-tuning batch whose microbatches score different token counts is still the batch's token mean."""
    (total, count), grads = jax.value_and_grad(lambda p: loss_fn(stop_gradients(p), cfg, batch, rng),
                                               has_aux=True)(params)
    return total, count, grads

  def step(state: TrainState, batch: jax.Array, learning_rate: jax.Array):
    # Dropout masks are a function of the step (resume is exact); a model without dropout draws none.
    rng = jax.random.fold_in(jax.random.key(DROPOUT_SEED), state.step) if has_dropout(cfg) else None
    if num_microbatches == 1:
      loss, grads = grads_of(state.params, batch, rng)
    else:
      # Microbatch i takes rows i, i + m, i + 2m, ...: every device keeps feeding its own rows.
      micro = batch.reshape(batch.shape[0] // num_microbatches, num_microbatches, -1).swapaxes(0, 1)

      def body(acc, mb_index):
        mb, index = mb_index
        mb_rng = None if rng is None else jax.random.fold_in(rng, index)
        return jax.tree.map(jnp.add, acc, summed_grads_of(state.params, mb, mb_rng)), None

      # The running sum is float32 whatever param_dtype is (a bfloat16 sum would round every microbatch).
      zeros = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32),
               jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params))
      (total, count, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(num_microbatches)))
      loss = total / count
      grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grads, state.params)
    grad_norm = optax.tree.norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))  # float32 for bf16 grads
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(_):
      direction, opt_state = tx.update(grads, state.opt_state, state.params, grad_norm=grad_norm)
      params = optax.apply_updates(state.params, optimizer_lib.apply_learning_rate(direction, learning_rate))
      return params, opt_state

    params, opt_state = jax.lax.cond(finite, apply, lambda _: (state.params, state.opt_state), None)
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "skipped": 1.0 - finite.astype(jnp.float32)}

  return step


def jit_train_step(step_fn, shardings: TrainState, mesh: Mesh):
  """jit with named shardings: state in/out by the rules table (donated), batch rows over data x fsdp."""
  rep = mesh_lib.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(shardings, mesh_lib.batch_sharding(mesh), rep),
                 out_shardings=(shardings, rep), donate_argnums=0)


def make_eval_step(cfg: ModelConfig, shardings: TrainState, mesh: Mesh):
  """eval(params, batch) -> (sum of token NLL, token count); for a classifier (sum of row NLL, row count,
  predicted class [B], true class [B])."""
  def evaluate(params, batch):
    if not cfg.class_labels:
      return loss_fn(params, cfg, batch)
    total, count, logits, labels = classifier_loss(params, cfg, batch)
    return total, count, jnp.argmax(logits, axis=-1), labels

  return jax.jit(evaluate, in_shardings=(shardings.params, mesh_lib.batch_sharding(mesh)),
                 out_shardings=mesh_lib.replicated(mesh))

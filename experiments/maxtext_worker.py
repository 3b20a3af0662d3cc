r"""MaxText's own jitted train step on a peer_models shape, timed on request: peer_benchmark.py's MaxText peer.

Runs under a Python that has MaxText (it needs Python >= 3.12 and its own jax, so not this repository's venv):

  python3.12 -m venv /tmp/mtvenv && /tmp/mtvenv/bin/pip install "maxtext[tpu]==0.2.5"   # the [tpu] extra: its deps
  python experiments/peer_benchmark.py --shapes=124m --peers=pytorch,maxtext --maxtext_python=/tmp/mtvenv/bin/python

The step is MaxText's: pyconfig from its base.yml, `train_utils.setup_train_loop`, and the `train_step` that its
`train.py` jits with `train_utils.jit_train_and_eval_step`, called as its training loop calls it (mesh and logical
axis rules set). The model is its `gpt3` decoder block (pre-LayerNorm, GELU MLP, learned positions, tied
embedding: GPT-2's layout) at the shape's sizes, float32 weights and activations, dot-product attention, no dropout,
remat_policy minimal_with_context (the fastest MaxText offers: it saves every projection's output, so
only elementwise work is recomputed), its Adam with weight decay 0.1 and clip 1.0. argv[2] picks its layer scan
("scan", its default) or an unrolled stack ("unrolled"): peer_benchmark.py's peers `maxtext` and `maxtext_unrolled`.

Protocol: argv[1] is the shape's JSON; one JSON line goes to the real stdout with a description once the step is
compiled, then each integer line read from stdin runs that many steps and answers with a JSON list of their seconds;
0 or end of input ends it. MaxText's own prints go to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _overrides(shape: dict, scan_layers: bool) -> list[str]:
  d, heads = shape["d_model"], shape["n_heads"]
  return [
      "run_name=peer_benchmark", f"base_output_directory={os.environ.get('TMPDIR', '/tmp')}/maxtext_peer",
      "hardware=cpu", "skip_jax_distributed_system=true", "dataset_type=synthetic", "enable_checkpointing=false",
      "steps=1000000", "log_period=1000000", "enable_tensorboard=false",
      "decoder_block=gpt3", f"base_emb_dim={d}", f"base_num_query_heads={heads}", f"base_num_kv_heads={heads}",
      f"head_dim={d // heads}", f"base_mlp_dim={4 * d}", f"base_num_decoder_layers={shape['n_layers']}",
      f"vocab_size={shape['vocab']}", f"trainable_position_size={shape['seq']}", 'mlp_activations=["gelu"]',
      "logits_via_embedding=true", "normalize_embedding_logits=false", "use_iota_embed=true", "fused_qkv=true",
      "enable_dropout=false", "normalization_layer_epsilon=1e-5",
      f"max_target_length={shape['seq']}", f"per_device_batch_size={shape['batch']}",
      "dtype=float32", "weight_dtype=float32", "matmul_precision=default", "logits_dot_in_fp32=false",
      "attention=dot_product", "remat_policy=minimal_with_context",  # its fastest: saves every named dot
      f"scan_layers={str(scan_layers).lower()}",
      "opt_type=adam_pax", "adam_b1=0.9", "adam_b2=0.95", "adam_eps=1e-8", "adam_weight_decay=0.1",
      "gradient_clipping_threshold=1.0", "learning_rate=1e-4",
  ]


def _build(shape: dict, scan_layers: bool):
  """MaxText's compiled train step, its state and two synthetic batches, as its train_loop sets them up."""
  import jax
  from flax import nnx
  from flax.core.spmd import logical_axis_rules
  from maxtext.configs import pyconfig
  from maxtext.trainers.pre_train import train
  from maxtext.utils import sharding, train_utils

  config = pyconfig.initialize([sys.argv[0], os.path.join(os.path.dirname(pyconfig.__file__), "base.yml")]
                               + _overrides(shape, scan_layers))
  jax.config.update("jax_default_prng_impl", "unsafe_rbg")  # as train.initialize does
  (_, _, state_mesh_shardings, _, mesh, _, _, data_loader, rampup_manager, _, state) = train_utils.setup_train_loop(
      config, recorder=None)
  graphdef, state = nnx.split(state)
  params_shardings, state_mesh_shardings = sharding.maybe_update_params_sharding_with_opt(config, state_mesh_shardings)
  p_train_step, _ = train_utils.jit_train_and_eval_step(config, graphdef, mesh, state, state_mesh_shardings,
                                                        train.train_step, None, None, params_shardings)
  batches = [data_loader.load_next_batch(rampup_manager=rampup_manager) for _ in range(2)]
  holder = {"state": state, "i": 0}

  def step():
    with jax.set_mesh(mesh), logical_axis_rules(config.logical_axis_rules):
      holder["state"], metrics = p_train_step(holder["state"], batches[holder["i"] % 2])
    holder["i"] += 1
    jax.block_until_ready((holder["state"], metrics))

  step()  # compiles
  import maxtext
  return step, (f"MaxText {getattr(maxtext, '__version__', '?')} on jax {jax.__version__} "
                f"(gpt3 block, dot_product attention, scan_layers={scan_layers})")


def main() -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"  # its [tpu] extra brings libtpu, which would otherwise probe for a TPU
  shape, scan_layers = json.loads(sys.argv[1]), sys.argv[2] == "scan"
  protocol = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # MaxText prints to stdout; only the protocol's lines may reach the driver's pipe
  step, description = _build(shape, scan_layers)
  protocol.write(json.dumps(description) + "\n")
  for line in sys.stdin:
    if (steps := int(line)) <= 0:
      break
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    protocol.write(json.dumps(times) + "\n")


if __name__ == "__main__":
  main()

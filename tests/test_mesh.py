"""One device vs 8 forced CPU devices on dp / fsdp / tp meshes and their combinations; per-device shard shapes
implied by the rules table; gradient accumulation equals the large batch; mesh-shape errors."""

import json
import os
import subprocess
import sys

import jax
import pytest

from gpt3_jax.parallel import mesh as mesh_lib

HERE = os.path.dirname(os.path.abspath(__file__))
# float32 sums reduced in a different order across shards: the losses agree to ~1e-6 relative.
RTOL = 1e-5


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, os.path.join(HERE, "mesh_equivalence.py")], capture_output=True,
                       text=True, env=env, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dp", "fsdp", "tp", "dp_fsdp", "dp_tp", "fsdp_tp", "single_accum4",
                                  "dp_accum4"])
def test_losses_equal_single_device(results, name):
  assert results[name]["losses"] == pytest.approx(results["single"]["losses"], rel=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["single_lost_update", "single_update_1pct_off"])
def test_the_comparison_catches_a_lost_or_wrong_update(results, name):
  """The learning rate (1e-2) moves the loss enough that a lost update or a 1% error in every update fails the
  equality above."""
  assert results[name]["losses"][0] == results["single"]["losses"][0]  # step 1 is before any update
  assert results[name]["losses"][2] != pytest.approx(results["single"]["losses"][2], rel=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name, fsdp, tp", [("dp", 1, 1), ("fsdp", 8, 1), ("tp", 1, 4), ("dp_fsdp", 4, 1),
                                            ("dp_tp", 1, 4), ("fsdp_tp", 2, 4)])
def test_shard_shapes_follow_rules(results, name, fsdp, tp):
  """d_model 64 is split over fsdp; heads (4), the MLP (256) and the vocabulary (512) over tensor."""
  shards = results[name]["shards"]
  expected = {
      "['wte']": [512 // tp, 64 // fsdp],
      "['wpe']": [32, 64 // fsdp],
      "['layers']['dense']['attention']['qkv_kernel']": [1, 64 // fsdp, 3, 4 // tp, 16],
      "['layers']['dense']['attention']['out_kernel']": [1, 4 // tp, 16, 64 // fsdp],
      "['layers']['local']['mlp']['in_kernel']": [1, 64 // fsdp, 256 // tp],
      "['layers']['local']['mlp']['out_kernel']": [1, 256 // tp, 64 // fsdp],
      "['layers']['local']['ln_1']['scale']": [1, 64 // fsdp],
      "['ln_f']['bias']": [64 // fsdp],
  }
  for key, shape in expected.items():
    assert shards[key] == shape, key


def test_resolve_mesh_shape():
  assert mesh_lib.resolve_mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert mesh_lib.resolve_mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  with pytest.raises(ValueError, match="needs 4 devices but 8 are available"):
    mesh_lib.resolve_mesh_shape((2, 2, 1), 8)
  with pytest.raises(ValueError, match="does not divide"):
    mesh_lib.resolve_mesh_shape((3, -1, 1), 8)
  with pytest.raises(ValueError, match="at most one -1"):
    mesh_lib.resolve_mesh_shape((-1, -1, 1), 8)


def test_unmatched_logical_axis_is_an_error():
  mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(shape=(1, 1, 1)), devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="'mystery' has no rule"):
    mesh_lib.logical_to_sharding({"w": jax.sharding.PartitionSpec("embed", "mystery")}, mesh)

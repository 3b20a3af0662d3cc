"""--cpu_devices (gpt3_jax/parallel/cpu_devices.py): how many XLA:CPU devices a training run asks for."""

import pytest

from gpt3_jax.parallel import cpu_devices

FLAG = "--xla_force_host_platform_device_count"


def test_a_count_is_added_to_xla_flags_and_keeps_the_others():
  env = {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}
  assert cpu_devices.request("2", environ=env) == 2
  assert env["XLA_FLAGS"] == f"--xla_cpu_use_thunk_runtime=true {FLAG}=2"
  env = {}
  assert cpu_devices.request("1", environ=env) == 1 and env == {}  # one device: XLA's default, nothing to set


def test_auto_is_one_per_core_as_many_as_divide_the_batch(monkeypatch):
  monkeypatch.setattr(cpu_devices, "cores", lambda: 6)
  assert cpu_devices.parse("auto") == 6
  assert cpu_devices.parse("auto", batch=8) == 4
  assert cpu_devices.parse("auto", batch=12) == 6
  assert cpu_devices.parse("auto", batch=7) == 1
  env = {}
  assert cpu_devices.request("auto", batch=8, environ=env) == 4 and env["XLA_FLAGS"] == f"{FLAG}=4"


def test_auto_fills_the_configured_mesh(monkeypatch):
  monkeypatch.setattr(cpu_devices, "cores", lambda: 3)
  assert cpu_devices.parse("auto", batch=12, mesh_shape=(-1, 1, 2)) == 2  # 3 devices cannot hold tensor = 2
  monkeypatch.setattr(cpu_devices, "cores", lambda: 6)
  assert cpu_devices.parse("auto", batch=12, mesh_shape=(-1, 1, 2)) == 6  # data 3 x tensor 2; 12 % 3 == 0
  assert cpu_devices.parse("auto", batch=4, mesh_shape=(-1, 1, 2)) == 4  # data 2: 6 devices (data 3) do not divide 4


def test_the_default_leaves_what_the_environment_asks_for():
  env = {"XLA_FLAGS": f"{FLAG}=8"}
  assert cpu_devices.request("1", environ=env) == 8 and env == {"XLA_FLAGS": f"{FLAG}=8"}
  assert cpu_devices.request("1", environ={"JAX_NUM_CPU_DEVICES": "4"}) == 4


@pytest.mark.parametrize("value", ["0", "-2", "two", ""])
def test_a_bad_count_is_a_one_line_error_with_a_valid_value(value):
  with pytest.raises(ValueError, match=r"--cpu_devices=.* must be a positive integer or 'auto'.*--cpu_devices=\d"):
    cpu_devices.parse(value)


def test_a_different_count_already_in_xla_flags_is_a_conflict():
  env = {"XLA_FLAGS": f"{FLAG}=8"}
  with pytest.raises(ValueError, match="conflicts with XLA_FLAGS"):
    cpu_devices.request("2", environ=env)
  assert cpu_devices.request("8", environ=env) == 8 and env["XLA_FLAGS"] == f"{FLAG}=8"
  with pytest.raises(ValueError, match=f"XLA_FLAGS' {FLAG}=4"):  # XLA takes the last occurrence
    cpu_devices.request("2", environ={"XLA_FLAGS": f"{FLAG}=2 {FLAG}=4"})
  with pytest.raises(ValueError, match="conflicts with JAX_NUM_CPU_DEVICES=4"):  # jax's setting wins over XLA's
    cpu_devices.request("2", environ={"JAX_NUM_CPU_DEVICES": "4"})

"""Malformed production sections of the system config (auth, tenancy, backpressure, limits) and wrong types
elsewhere: each a ConfigError naming the field and the value (test_config.py has the YAML-level cases)."""

import pytest

from modm.config import ConfigError, config_from_dict, load_config

BASE = {"models": {"large": {"source": "a"}, "small": {"source": "b"}}}


@pytest.mark.parametrize(
    "section, field, value",
    [
        ({"auth": {"api_keys_file": "keys.txt"}}, "auth.api_keys_file", "keys.txt"),
        ({"auth": {"api_keys": [{"sha256": "xyz", "tenant": "a"}]}}, "auth.api_keys.0.sha256", "xyz"),
        ({"auth": {"api_keys": [{"sha256": "0" * 64, "tenant": "/abs"}]}}, "auth.api_keys.0.tenant", "/abs"),
        ({"auth": {"api_keys": [{"sha256": "0" * 64}]}}, "auth.api_keys.0.tenant", "Field required"),
        ({"auth": {"keys": []}}, "auth.keys", "[]"),
        ({"tenancy": {"shared_pool_tenants": ["ok", "no\x00pe"]}}, "tenancy.shared_pool_tenants", "no\\x00pe"),
        ({"tenancy": {"shared_pool_tenants": "alice"}}, "tenancy.shared_pool_tenants", "alice"),
        ({"backpressure": {"max_queued_requests": 0}}, "backpressure.max_queued_requests", "0"),
        ({"backpressure": {"max_expected_latency_s": -1}}, "backpressure.max_expected_latency_s", "-1"),
        ({"backpressure": {"admission_control": "sometimes"}}, "backpressure.admission_control", "sometimes"),
        ({"backpressure": {"queue": 3}}, "backpressure.queue", "3"),
        ({"limits": {"max_body_bytes": 10}}, "limits.max_body_bytes", "10"),
        ({"monitor": {"gpu_budget": "two"}}, "monitor.gpu_budget", "two"),
        ({"serving": {"request_timeout_s": [1]}}, "serving.request_timeout_s", "[1]"),
        ({"seed": 1.5}, "seed", "1.5"),
        ({"mode": None}, "mode", "None"),
    ],
)
def test_security_and_backpressure_config_errors_name_the_field(section, field, value):
    with pytest.raises(ConfigError) as err:
        config_from_dict({**BASE, **section})
    assert field in str(err.value) and value in str(err.value), str(err.value)


def test_a_yaml_file_with_a_bad_production_section_names_the_file_and_field(tmp_path):
    path = tmp_path / "system.yaml"
    path.write_text("models: {large: {source: a}, small: {source: b}}\nauth:\n  api_keys_file: keys.txt\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "system.yaml" in str(err.value) and "auth.api_keys_file" in str(err.value)

"""Settings: defaults that run, file and environment, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EDGEGW_"):
            monkeypatch.delenv(key)


def test_defaults_run_against_a_local_broker() -> None:
    s = load_settings()
    assert (s.mqtt.host, s.mqtt.port) == ("localhost", 1883)
    assert s.mqtt.telemetry_topic == "telemetry/#"
    assert s.batcher.queue_delay == 0.0
    assert s.client_id == f"edgegw-{s.gateway.id}"


def test_file_then_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "press-hall"\n[mqtt]\nport = 1884\nhost = "broker"\n')
    monkeypatch.setenv("EDGEGW_MQTT__PORT", "18830")
    s = load_settings(path)
    assert s.gateway.id == "press-hall"
    assert s.mqtt.host == "broker"
    assert s.mqtt.port == 18830


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("EDGEGW_MQTT__PORT", "eighteen", "mqtt.port [EDGEGW_MQTT__PORT]"),
        ("EDGEGW_MQTT__PORT", "70000", "mqtt.port"),
        ("EDGEGW_BATCHER__MAX_BATCH", "0", "batcher.max_batch"),
        ("EDGEGW_MQTT__TELEMETRY_TOPIC", "telemetry/+", "mqtt"),
        ("EDGEGW_GATEWAY__ID", "a/b", "gateway.id"),
        ("EDGEGW_MQTT__PROT", "1", "mqtt.prot [EDGEGW_MQTT__PROT]: Extra inputs"),
        ("EDGEGW_LOG__LEVEL", "LOUD", "log.level"),
    ],
)
def test_bad_settings_name_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert named in str(info.value)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[batcher]\nmax_bach = 4\n")
    with pytest.raises(ConfigError, match=r"batcher\.max_bach"):
        load_settings(typo)

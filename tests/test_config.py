from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.config import ConfigError, HiveConfig, load_config


def test_missing_default_config_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVE_CONFIG", raising=False)
    monkeypatch.setattr("enforcer.config.DEFAULT_CONFIG_PATH", Path("/nonexistent/hive.toml"))
    assert load_config().run_dir == HiveConfig().run_dir


def test_config_file_is_parsed_once_into_frozen_dataclass(tmp_path: Path) -> None:
    f = tmp_path / "hive.toml"
    f.write_text('run_dir = "/tmp/x"\n[gateway]\nlisten = "127.0.0.1:9999"\n')
    cfg = load_config(f)
    assert cfg.run_dir == Path("/tmp/x")
    assert cfg.gateway.port == 9999
    assert cfg.gateway.origin == "http://127.0.0.1:9999"
    with pytest.raises(AttributeError):
        cfg.run_dir = Path("/")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("run_dir = [", "invalid TOML"),
        ("bogus = 1", "unknown key(s) bogus"),
        ("[gateway]\nport = 'x'", "port must be int"),
        ("[gateway]\nlisten = 'nope'", "listen must be HOST:PORT"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "hive.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(f)


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")

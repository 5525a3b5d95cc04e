"""Settings: precedence flags > INGESTD_* environment > TOML file > defaults, and one-line errors."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from ingestd import cli, config
from ingestd.config import ConfigError, Settings, load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def toml(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "ingestd.toml"
        path.write_text(text)
        return str(path)
    return write


def test_defaults_when_nothing_is_set():
    assert load({}, environ={}) == Settings()


def test_flags_beat_environment_beat_toml_beat_defaults(toml):
    path = toml('listen = "127.0.0.1:1001"\nworkers = 3\nlog_level = "debug"\nspool-max-bytes = "1G"\n')
    environ = {"INGESTD_CONFIG": path, "INGESTD_LISTEN": "127.0.0.1:2002", "INGESTD_WORKERS": "4"}
    settings = load({"listen": "127.0.0.1:3003", "admin": None}, environ=environ)
    assert settings.listen == "127.0.0.1:3003"  # flag over environment and file
    assert settings.workers == 4  # environment over file
    assert settings.log_level == "debug"  # file over default
    assert settings.spool_max_bytes == 1 << 30  # file, with a unit, hyphenated key
    assert settings.admin == Settings.admin  # default (a flag left unset is None, not a value)


def test_config_flag_beats_config_environment(toml, tmp_path):
    path = toml("workers = 5\n")
    settings = load({"config": path}, environ={"INGESTD_CONFIG": str(tmp_path / "absent.toml")})
    assert settings.workers == 5


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().workers = 2  # type: ignore[misc]


@pytest.mark.parametrize("flags, environ, file_text, expected", [
    ({"workers": "0"}, {}, None, "--workers '0': must be > 0"),
    ({}, {"INGESTD_SPOOL_MAX_BYTES": "lots"}, None, "INGESTD_SPOOL_MAX_BYTES='lots': expected an integer"),
    ({}, {"INGESTD_FSYNC": "sometimes"}, None, "INGESTD_FSYNC='sometimes': expected one of never, interval"),
    ({"listen": "8080"}, {}, None, "--listen '8080': expected HOST:PORT"),
    ({"drain_timeout": "-1"}, {}, None, "--drain-timeout '-1': must be >= 0"),
    ({"trust_proxy": "10.0.0.0/8,nonsense"}, {}, None, "--trust-proxy '10.0.0.0/8,nonsense'"),
    ({}, {}, 'workers = "two"\n', "workers = 'two': expected an integer"),
    ({}, {}, "wrkers = 2\n", "unknown key 'wrkers'"),
    ({}, {}, "workers = \n", "is not valid TOML"),
    ({"admin": "0.0.0.0:9100"}, {}, None, "admin-token: required when the admin listener is not on loopback"),
    ({"segment_max_bytes": "3G"}, {}, None, "segment-max-bytes: must not exceed spool-max-bytes"),
    ({"spool_max_bytes": "100000000T"}, {}, None, "--spool-max-bytes '100000000T': expected a size under 8 EiB"),
    ({"segment_max_bytes": "1G", "spool_max_bytes": "2G", "workers": "4"}, {}, None,
     "segment-max-bytes: must not exceed spool-max-bytes / workers (4)"),
    ({"clickhouse": "mysql://x"}, {}, None, "clickhouse: expected chdb://PATH or http(s)://"),
])
def test_bad_configuration_names_the_key(toml, flags, environ, file_text, expected):
    if file_text is not None:
        flags = {**flags, "config": toml(file_text)}
    with pytest.raises(ConfigError) as raised:
        load(flags, environ=environ)
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize("name, value", [
    ("rate_limit", "nan"), ("rate_limit", "inf/s"), ("header_timeout", "nan"), ("idle_timeout", "inf"),
    ("drain_timeout", "nan"), ("ready_timeout", "inf"), ("spool_max_bytes", "infG"), ("segment_max_bytes", "nanM"),
])
def test_non_finite_numbers_are_refused_with_one_line(name, value):
    """NaN passes every comparison (a NaN rate limit made every beacon a 500); inf overflowed int()."""
    with pytest.raises(ConfigError) as raised:
        load({name: value}, environ={})
    assert str(raised.value) == f"--{name.replace('_', '-')} {value!r}: expected a finite number"


@pytest.mark.parametrize("line", ["header_timeout = nan", "drain_timeout = inf", "workers = inf", "loop_nice = -inf"])
def test_non_finite_toml_numbers_are_refused(toml, line):
    """TOML has its own nan and inf literals: int() of them overflows, which is a one-line error too."""
    with pytest.raises(ConfigError, match=f"{line.split()[0]} = .*: expected a finite number$"):
        load({"config": toml(line + "\n")}, environ={})


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .*absent.toml"):
        load({"config": str(tmp_path / "absent.toml")}, environ={})


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    environ.update(PYTHONPATH=REPO, **(env or {}))
    return subprocess.run([sys.executable, "-m", "ingestd", *args], capture_output=True, text=True, env=environ,
                          timeout=60)


def test_serve_with_bad_configuration_exits_2_with_one_line():
    result = run_cli("serve", "--workers", "many")
    assert result.returncode == 2
    assert result.stderr == "ingestd: invalid configuration: --workers 'many': expected an integer\n"


def test_an_infinite_size_is_one_line_not_a_traceback():
    result = run_cli("serve", "--spool-max-bytes", "infG", "--print-config")
    assert result.returncode == 2
    assert result.stderr == "ingestd: invalid configuration: --spool-max-bytes 'infG': expected a finite number\n"


def test_print_config_shows_the_effective_settings_with_secrets_redacted(toml, monkeypatch, capsys):
    for key in list(os.environ):
        if key.startswith("INGESTD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("INGESTD_ADMIN_TOKEN", "s3cret-token")
    path = toml('clickhouse = "https://ingest:hunter2@ch.example:8443/analytics"\nworkers = 2\n')
    assert cli.main(["serve", "--config", path, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert '"workers": 2' in out
    assert "https://ingest:***@ch.example:8443/analytics" in out
    assert '"admin_token": "***"' in out
    assert "hunter2" not in out and "s3cret-token" not in out


def test_every_setting_has_a_flag_and_an_environment_variable():
    help_text = run_cli("serve", "--help").stdout
    for name in config.FIELDS:
        assert f"--{name.replace('_', '-')}" in help_text
        assert f"INGESTD_{name.upper()}" in help_text


def test_a_busy_port_is_one_line_not_a_traceback():
    """Also when the holder uses SO_REUSEPORT: --workers checks the port is free before sharing it."""
    import socket

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # --workers must not join its group
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        address = "127.0.0.1:%d" % busy.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            result = run_cli("serve", "--listen", address, "--admin", "127.0.0.1:0", *extra)
            assert result.returncode == 2
            assert result.stderr.endswith(f"cannot listen on {address}: Address already in use\n"), result.stderr
            assert result.stderr.count("\n") == 1


def test_an_environment_variable_matching_no_setting_is_named():
    environ = {"INGESTD_WORKER": "4", "INGESTD_WORKERS": "2", "INGESTD_SCHEMA_DIR": "/x", "OTHER": "1"}
    assert config.unknown_environment(environ) == ["INGESTD_WORKER"]


@pytest.mark.parametrize("dsn, shown", [
    ("http://ingest:Xy@9kLmQ2zz@ch1:8123/", "http://ingest:***@ch1:8123/"),  # a password holding '@'
    ("https://u:p@h:8443/db?x=a@b", "https://u:***@h:8443/db?x=a@b"),
    ("http://h:8123/", "http://h:8123/"), ("http://u@h/", "http://u@h/"), ("chdb:///var/lib/x", "chdb:///var/lib/x"),
])
def test_dsn_password_is_redacted_up_to_the_host(dsn, shown):
    from ingestd.clickhouse import redact

    assert redact(dsn) == shown

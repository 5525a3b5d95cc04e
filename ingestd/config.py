"""Settings: one frozen dataclass, resolved as flags > environment (INGESTD_*) > TOML file > defaults.

The only module that reads the environment. Every setting is validated here, before anything
starts, and a bad one fails with a one-line error naming the key.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "INGESTD_"


class ConfigError(ValueError):
    """An invalid setting; the message names the key."""


def _finite(value):
    """float() reads 'nan' and 'inf': a NaN passes every comparison, so refuse both here."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _size(text) -> int:
    """'512M', '2G', '1048576' -> bytes."""
    if isinstance(text, int):
        size = text
    else:
        s = str(text).strip().upper().removesuffix("B").removesuffix("I")
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        size = int(_finite(float(s[:-1])) * units[s[-1]]) if s and s[-1] in units else int(s)
    if size >= 1 << 63:  # no disk is that large, and the JSON log and /metrics hold 64-bit integers
        raise ValueError("expected a size under 8 EiB")
    return size


def _address(text) -> str:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT")
    return str(text)


def _choice(*options):
    def parse(text):
        if str(text) not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return str(text)
    parse.options = options  # type: ignore[attr-defined]
    return parse


def _rate(text) -> float:
    """'100/s' or '100' -> requests per second per IP; 0 disables."""
    value = _finite(float(str(text).strip().removesuffix("/s")))
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _networks(text) -> tuple:
    if isinstance(text, (list, tuple)):
        items = text
    else:
        items = [t for t in str(text).split(",") if t.strip()]
    return tuple(ipaddress.ip_network(t.strip(), strict=False) for t in items)


def _bool(text) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _positive(kind):
    def parse(text):
        value = _finite(kind(text))
        if value <= 0:
            raise ValueError("must be > 0")
        return value
    return parse


def _non_negative(kind):
    def parse(text):
        value = _finite(kind(text))
        if value < 0:
            raise ValueError("must be >= 0")
        return value
    return parse


def _nice(text) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise ValueError("must be 0-19")
    return value


def setting(default, parse, help_text, secret=False, flag=True):
    return field(default=default, metadata={"parse": parse, "help": help_text, "secret": secret, "flag": flag})


@dataclass(frozen=True)
class Settings:
    listen: str = setting("127.0.0.1:8080", _address, "beacon listener HOST:PORT")
    admin: str = setting("127.0.0.1:9100", _address, "admin listener HOST:PORT (/healthz /readyz /metrics /query)")
    clickhouse: str = setting("chdb://./data/clickhouse", str, "ClickHouse DSN: chdb://PATH or http(s)://user:pass@host:8123/db",
                              secret=True)
    spool: str = setting("./data/spool", str, "spool directory")
    config: str = setting("", str, "TOML configuration file (keys as the long flags, with underscores)")
    validation: str = setting("default", _choice("default", "strict"),
                              "strict rejects beacons missing a required field; default records them in missing_fields")
    fsync: str = setting("never", _choice("never", "interval"),
                         "never: a 200 survives a crash of ingestd; interval: also power loss older than --fsync-interval-ms")
    fsync_interval_ms: int = setting(200, _positive(int), "fdatasync period with --fsync interval")
    spool_max_bytes: int = setting(2 << 30, _positive(_size), "spool cap: above it beacons get 503 + Retry-After")
    segment_max_bytes: int = setting(8 << 20, _positive(_size), "seal a segment (one ClickHouse insert) at this size")
    segment_max_age_ms: int = setting(1000, _positive(int), "seal a segment at this age")
    loop_nice: int = setting(5, _nice, "nice value of the event-loop thread (0-19): when CPU is short, shipping "
                                       "to ClickHouse wins over accepting beacons, so the spool stays small")
    drain_timeout: float = setting(10.0, _non_negative(float), "seconds to ship the spool on SIGTERM before exiting")
    workers: int = setting(1, _positive(int), "beacon processes sharing the port (SO_REUSEPORT); about one per core")
    ready_timeout: float = setting(30.0, _non_negative(float),
                                   "seconds to wait for ClickHouse (migrations) before telling systemd READY=1 "
                                   "anyway; beacons are spooled meanwhile")
    max_connections: int = setting(10000, _positive(int), "open beacon connections before new ones are refused")
    rate_limit: float = setting(0.0, _rate, "per-IP requests/s (token bucket, burst = 2 s); 0 = off")
    trust_proxy: tuple = setting((), _networks, "CIDRs whose X-Forwarded-For/Forwarded is believed")
    ip_mode: str = setting("full", _choice("full", "truncate", "hash", "drop"), "how the client IP is stored")
    admin_token: str = setting("", str, "bearer token for the admin listener (required off loopback)", secret=True)
    header_timeout: float = setting(10.0, _positive(float), "seconds to receive a whole request (slowloris)")
    idle_timeout: float = setting(30.0, _positive(float), "seconds an idle keep-alive connection is kept")
    log_level: str = setting("info", _choice("debug", "info", "warning", "error"), "log level (JSON lines on stderr)")
    hold_shipping: bool = setting(False, _bool, "start with shipping held (benchmarks); resume with POST /ship on admin")
    cluster: str = setting("", str, "ClickHouse cluster name: serve leaves the schema to `ingestd migrate --cluster` "
                                    "and inserts into the local tables of the node the DSN names")

    @property
    def strict(self) -> bool:
        return self.validation == "strict"

    def redacted(self) -> dict:
        """The effective settings with secrets hidden, for --print-config and the start log line."""
        from .clickhouse import redact

        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "clickhouse":
                value = redact(value)
            elif f.metadata["secret"] and value:
                value = "***"
            elif f.name == "trust_proxy":
                value = [str(n) for n in value]
            out[f.name] = value
        return out


FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _reason(exc: Exception) -> str:
    """A parse error in words: int('x') and float('x') explain themselves poorly."""
    text = str(exc)
    if text.startswith("invalid literal for int()"):
        return "expected an integer"
    if text.startswith("could not convert string to float"):
        return "expected a number"
    if isinstance(exc, OverflowError):  # int() of an infinite float (a TOML `inf`)
        return "expected a finite number"
    return text


def _parse(name: str, value, source: str):
    """Parse one value; the error names the key as the user wrote it (--flag, INGESTD_VAR or TOML key)."""
    try:
        return FIELDS[name].metadata["parse"](value)
    except (ValueError, TypeError, OverflowError) as exc:
        if source == "flag":
            key = f"--{name.replace('_', '-')} {value!r}"
        elif source == "environment":
            key = f"{ENV_PREFIX}{name.upper()}={value!r}"
        else:
            key = f"{source}: {name} = {value!r}"
        raise ConfigError(f"{key}: {_reason(exc)}") from None


def load(flags: dict | None = None, environ: dict | None = None) -> Settings:
    """Resolve settings from flags (non-None values), the environment and the TOML file they name."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None and k in FIELDS}
    environ = os.environ if environ is None else environ
    from_env = {}
    for name in FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in environ:
            from_env[name] = environ[key]
    config_path = flags.get("config") or from_env.get("config") or ""
    from_file = {}
    if config_path:
        try:
            data = tomllib.loads(Path(config_path).read_text())
        except OSError as exc:
            raise ConfigError(f"config: cannot read {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {config_path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in FIELDS or name == "config":
                raise ConfigError(f"{config_path}: unknown key {key!r}")
            from_file[name] = value
    values = {}
    for source, layer in ((config_path, from_file), ("environment", from_env), ("flag", flags)):
        for name, value in layer.items():
            values[name] = _parse(name, value, source)
    settings = Settings(**values)
    _check(settings)
    return settings


# INGESTD_* variables that are not settings (read elsewhere on purpose).
ENV_NOT_SETTINGS = frozenset({"INGESTD_SCHEMA_DIR"})


def unknown_environment(environ: dict | None = None) -> list[str]:
    """INGESTD_* variables that match no setting (a typo such as INGESTD_WORKER is ignored, and warned of)."""
    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + name.upper() for name in FIELDS} | ENV_NOT_SETTINGS
    return sorted(key for key in environ if key.startswith(ENV_PREFIX) and key not in known)


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(settings: Settings) -> None:
    if settings.admin == settings.listen and not settings.listen.endswith(":0"):
        raise ConfigError("admin: the admin listener must not share the beacon port")
    if not _is_loopback(settings.admin) and not settings.admin_token:
        raise ConfigError("admin-token: required when the admin listener is not on loopback")
    if not (settings.clickhouse.startswith("chdb://") or settings.clickhouse.startswith(("http://", "https://"))):
        raise ConfigError("clickhouse: expected chdb://PATH or http(s)://…")
    if settings.segment_max_bytes > settings.spool_max_bytes // settings.workers:
        # each worker's spool holds its share of the cap (server.py): a segment must fit in a share
        raise ConfigError("segment-max-bytes: must not exceed spool-max-bytes"
                          + (f" / workers ({settings.workers})" if settings.workers > 1 else ""))


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)

"""YAML config -> validated, frozen config objects.

Loaded once; after `load_config` no code sees a dict. Every error names the file, the key path
and the problem (`config.yaml: terminals[1].points[0].type: unknown type 'floot' (...)`), and
all errors of a file are reported together. Defaults are documented in config/example.yaml.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.check_settings import ChecksConfig, HealthConfig, split_key
from agent.config_base import Frozen, HostPort, Language, TerminalModel, parse_host_port
from agent.config_errors import DuplicateKey, describe, key_path, nearest
from agent.config_yaml import SafeLoader, load_yaml
from agent.diagnosis.settings import DiagnosisConfig
from agent.durations import Duration, PositiveDuration
from agent.protocols.modbus.config import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    ModbusRtuTerminal,
    ModbusTcpTerminal,
    ModbusTerminal,
    PointConfig,
)
from agent.protocols.registry import DRIVERS
from agent.protocols.sl651.config import (
    Sl651Config,
    Sl651SerialPort,
    Sl651Terminal,
    unreachable_stations,
)
from agent.storage.layout import StateLayout
from agent.update.settings import UpdateConfig

T = TypeVar("T", bound=TerminalModel)

__all__ = [  # the protocols' models, for callers that read a whole config
    "BIT_TABLES",
    "MAX_BITS_PER_READ",
    "MAX_REGISTERS_PER_READ",
    "Config",
    "ConfigError",
    "ModbusRtuTerminal",
    "ModbusTcpTerminal",
    "ModbusTerminal",
    "PointConfig",
    "Sl651Config",
    "Sl651SerialPort",
    "Sl651Terminal",
]

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/config.yaml")
CONFIG_ENV = "EDGE_AGENT_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds one line per problem."""

    def __init__(self, path: Path | str, errors: Sequence[str]) -> None:
        self.path = Path(path)
        self.errors = list(errors)
        super().__init__("\n".join(f"{self.path.name}: {e}" for e in self.errors))

    def lines(self) -> list[str]:
        """One line per problem, each starting with the file name."""
        return [f"{self.path}: {e}" for e in self.errors]


_Frozen = Frozen


class GatewayConfig(_Frozen):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SiteConfig(_Frozen):
    """The `site:` section: the site the gateway serves, as its inspection report names it."""

    name: str | None = Field(default=None, min_length=1, max_length=200)  # default: gateway.id
    location: str | None = Field(default=None, min_length=1, max_length=200)
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    contact: str | None = Field(default=None, min_length=1, max_length=200)
    language: Language = "en"  # of the report: en or zh (`edge-agent report --lang` overrides)
    timezone: str = "UTC"  # the report's times: an IANA name, e.g. Asia/Shanghai

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        time_zone(name)
        return name

    @property
    def zone(self) -> tzinfo:
        return time_zone(self.timezone)


def time_zone(name: str) -> tzinfo:
    """The time zone of an IANA name (UTC without the system's time-zone database)."""
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai, or UTC)"
        ) from None


class LogConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # auto: readable on a terminal, JSON lines otherwise (journald).
    format: Literal["auto", "json", "console"] = "auto"


class JsonlConfig(_Frozen):
    """The local JSON-lines copy of every reading (off by default; the outbox is the way upstream)."""

    enabled: bool = False
    path: Path | None = None  # default: <state_dir>/readings.jsonl
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)  # then rotate to .1


class OutboxConfig(_Frozen):
    """The durable store-and-forward queue (<state_dir>/outbox.db)."""

    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    max_age: Duration | None = None  # telemetry older than this is evicted (counted, reported)
    # full: every put survives a power cut (fsync per transaction, batched);
    # normal: survives a crash of the agent, a power cut may lose the last transactions.
    synchronous: Literal["full", "normal"] = "full"
    # Readings per telemetry message at most; None: `Config.telemetry_batch` (by the schema).
    batch: int | None = Field(default=None, ge=1, le=10_000)
    # Readings of several polls share one message: it is stored when `batch` readings wait or
    # this long after the first of them (so a reading is durable at most this late).
    linger: Duration = 0.2
    # A report that must be durable before it is confirmed (SL651) waits this long for others
    # to share its transaction: a little latency for many fewer transactions under load.
    commit_window: Duration = Field(default=0.005, le=1.0)
    # Bytes of messages waiting in memory to be stored (a slow disk, a long transaction) past
    # which the pollers skip their slots (counted per terminal) instead of polling: what was
    # polled is never given up to make room, and memory stays bounded.
    max_backlog: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    # Room kept on the disk (<state_dir>/outbox.db.reserve, allocated) so that acknowledgements,
    # alarms, health and the count of lost readings are still written when the disk is full.
    reserve_bytes: int = Field(default=4 * 1024 * 1024, ge=256 * 1024, le=256 * 1024 * 1024)


class TelemetryConfig(_Frozen):
    """How readings travel upstream (docs/telemetry.md)."""

    model_config = ConfigDict(
        **_Frozen.model_config, validate_by_name=True, serialize_by_alias=True
    )

    # 2: readings grouped by terminal and poll time against the retained `…/meta` message;
    # 1: one JSON object per reading (for receivers that need the old body).
    # (`schema` in the file: a pydantic model has a `schema` attribute of its own.)
    body_schema: Literal[1, 2] = Field(default=2, alias="schema")
    # The payload of telemetry and meta messages compressed before signing (the protected
    # header says `"cty":"zlib"`, application/zlib); none: plain JSON.
    compression: Literal["none", "zlib"] = "zlib"

    @property
    def compressed_kinds(self) -> dict[str, str]:
        """Message kind -> compression, for the outbox."""
        if self.compression == "none":
            return {}
        return {"telemetry": self.compression, "meta": self.compression}


# A systemd credential's name (LoadCredential=): a file name in $CREDENTIALS_DIRECTORY.
# A credential under its default name is used when there; one given another name must be there
# (agent/credentials.py).
CREDENTIAL_NAME = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
DEFAULT_PASSWORD_CREDENTIAL = "mqtt-password"  # noqa: S105 -- the name of a credential
DEFAULT_KEY_CREDENTIAL = "tls-key"


class TlsConfig(_Frozen):
    ca: Path | None = None  # CA bundle that signs the broker's certificate (default: system CAs)
    cert: Path | None = None  # client certificate (mutual TLS)
    key: Path | None = None  # its private key; without it, the credential below
    # The systemd credential that holds the key when `key` is not given (agent/credentials.py).
    key_credential: str | None = Field(default=DEFAULT_KEY_CREDENTIAL, pattern=CREDENTIAL_NAME)

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        # cert without key is fine here: the key may come from the credential, found at start.
        if self.key is not None and self.cert is None:
            raise ValueError("cert and key go together (client certificate and its key)")
        if self.cert is not None and self.key is None and self.key_credential is None:
            raise ValueError("cert needs its key: give key, or key_credential (a credential)")
        if self.key_credential not in (None, DEFAULT_KEY_CREDENTIAL):
            if self.key is not None:
                raise ValueError("key and key_credential exclude each other: give one of them")
            if self.cert is None:
                raise ValueError("key_credential needs cert (the client certificate of that key)")
        return self


class UplinkConfig(_Frozen):
    """The MQTT session upstream. Without `broker` the agent keeps everything in the outbox."""

    broker: str | None = Field(default=None, pattern=r"^mqtts?://[^/:]+(:\d+)?/?$")
    client_id: str | None = None  # default: edge-agent-<gateway id>
    username: str | None = None
    password: str | None = None  # without it, the credential below (if systemd hands it over)
    # The systemd credential that holds the password when `password` is not given.
    password_credential: str | None = Field(
        default=DEFAULT_PASSWORD_CREDENTIAL, pattern=CREDENTIAL_NAME
    )
    tls: TlsConfig = TlsConfig()
    topic_prefix: str = "edge/{gateway_id}"
    keepalive: PositiveDuration = 30.0
    inflight: int = Field(default=32, ge=1, le=1000)  # messages awaiting PUBACK at once
    connect_timeout: PositiveDuration = 10.0
    # No PUBACK at all for this long while messages wait for one: the session is renewed (after a
    # backoff that grows with each such session) and what waits is sent again, marked DUP.
    publish_timeout: PositiveDuration = 60.0
    backoff_min: PositiveDuration = 1.0  # reconnect delay: doubles from this, with jitter ...
    backoff_max: PositiveDuration = 120.0  # ... up to this
    # Messages that come down (diag requests, update announcements) larger than this are refused.
    max_inbound_bytes: int = Field(default=256 * 1024, ge=1)

    @model_validator(mode="after")
    def _one_password(self) -> UplinkConfig:
        if self.password is not None and self.password_credential not in (
            None,
            DEFAULT_PASSWORD_CREDENTIAL,
        ):
            raise ValueError(
                "password and password_credential exclude each other: give one of them"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.broker is not None and self.broker.startswith("mqtts://")

    @property
    def host(self) -> str:
        assert self.broker is not None
        return self.broker.split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        assert self.broker is not None
        rest = self.broker.split("://", 1)[1].rstrip("/")
        if ":" in rest:
            return int(rest.rsplit(":", 1)[1])
        return 8883 if self.tls_enabled else 1883


class ControlConfig(_Frozen):
    """The local control socket (`edge-agent status` and friends)."""

    socket: Path = Path("/run/edge-agent/control.sock")
    group: str | None = None  # the group that may use it (mode 0660); default: the agent's own


class MetricsConfig(_Frozen):
    """Prometheus metrics over HTTP; off unless `listen` is set."""

    listen: HostPort | None = None  # e.g. 127.0.0.1:9108 or "[::1]:9108"

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.listen is None else parse_host_port(self.listen)


# Every protocol's terminal models, told apart by `protocol` (agent/protocols/registry.py).
TERMINAL_MODELS = tuple(model for spec in DRIVERS for model in spec.terminal_models)
PROTOCOLS = tuple(protocol for spec in DRIVERS for protocol in spec.protocols)
if TYPE_CHECKING:
    Terminal = TerminalModel
else:
    Terminal = Annotated[
        TERMINAL_MODELS[0] if len(TERMINAL_MODELS) == 1 else Union[TERMINAL_MODELS],  # noqa: UP007
        Field(discriminator="protocol"),
    ]


# The sections a running agent takes up without a restart: the terminals are applied on reload,
# and `site:` is read from the file by `edge-agent report` (the daemon does not use it).
NO_RESTART_SECTIONS = frozenset({"terminals", "site"})


class Config(_Frozen):
    gateway: GatewayConfig
    site: SiteConfig = SiteConfig()
    state_dir: Path = Path("/var/lib/edge-agent")
    log: LogConfig = LogConfig()
    jsonl: JsonlConfig = JsonlConfig()
    outbox: OutboxConfig = OutboxConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    uplink: UplinkConfig = UplinkConfig()
    sl651: Sl651Config = Sl651Config()
    checks: ChecksConfig = ChecksConfig()
    health: HealthConfig = HealthConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    update: UpdateConfig = UpdateConfig()
    diagnosis: DiagnosisConfig = DiagnosisConfig()
    terminals: list[Terminal] = Field(default_factory=list)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        dupes = [n for n, c in Counter(t.name for t in self.terminals).items() if c > 1]
        if dupes:
            raise ValueError(f"terminal names must be unique; repeated: {', '.join(dupes)}")
        for spec in DRIVERS:
            if spec.check is not None:
                spec.check(spec.terminals(self.terminals))
        return self

    @property
    def telemetry_batch(self) -> int:
        """Readings per telemetry message at most: `outbox.batch`, or by default 5,000 with the
        compact body of schema 2 (about 8 bytes a plain reading uncompressed, 3.5–4.5 with
        zlib: 20–40 KB) — each message costs a signature, a write to the outbox and a round
        trip to the broker, so fewer, larger messages cost less CPU per reading — and 500 with
        the per-reading body of schema 1 (about 200 bytes a reading: 100 KB)."""
        if self.outbox.batch is not None:
            return self.outbox.batch
        return 5000 if self.telemetry.body_schema == 2 else 500

    def terminals_of(self, *models: type[T]) -> list[T]:
        """The terminals of these config models (a driver's own), in config order."""
        return [t for t in self.terminals if isinstance(t, models)]

    def terminal(self, name: str) -> TerminalModel:
        for t in self.terminals:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.terminals) or "none configured"
        raise KeyError(f"no terminal named {name!r} (known: {known})")

    def point_label(self, terminal: str, point: str, language: Language) -> str | None:
        """A point's plain name (its `label`, or its protocol's name for it), if it has one."""
        found = next((t for t in self.terminals if t.name == terminal), None)
        return None if found is None else found.point_label(point, language)

    @property
    def layout(self) -> StateLayout:
        """Every file under state_dir and the runtime folder (agent.storage.layout)."""
        return StateLayout(self.state_dir, self.control.socket.parent, self.control.socket)

    @property
    def jsonl_path(self) -> Path:
        return self.jsonl.path or self.layout.readings_jsonl

    @property
    def outbox_path(self) -> Path:
        return self.layout.outbox_db

    @property
    def topic_prefix(self) -> str:
        return self.uplink.topic_prefix.replace("{gateway_id}", self.gateway.id)

    @property
    def client_id(self) -> str:
        return self.uplink.client_id or f"edge-agent-{self.gateway.id}"


class ConfigLoader(SafeLoader):  # type: ignore[misc,valid-type]
    """The safe YAML loader, refusing a key given twice in one mapping (YAML keeps the last
    one silently). The check costs one length comparison per mapping: only a mapping that
    came out shorter than it was written is looked at again. (`load_yaml` reads a file
    without it and hands it what it does not read alike: a key given twice among them.)"""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Merge keys (`<<: *base`) are taken out of this very list; the keys written here
        # stay in it while `node.value` becomes the merged ones followed by them.
        written = node.value if isinstance(node, yaml.MappingNode) else None
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        if written is not None and len(mapping) < len(node.value):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in written:
                key = self.construct_object(key_node, deep=deep)
                if key in first:
                    raise DuplicateKey(
                        key, key_node.start_mark.line + 1, first[key].start_mark.line + 1
                    )
                first[key] = key_node
        return mapping


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV, DEFAULT_CONFIG_PATH))


def load_config(path: Path | str) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a folder, not a file"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {(exc.strerror or str(exc)).lower()}"]) from exc
    return parse_config_bytes(data, path)


def parse_config_bytes(data: bytes, path: Path | str) -> Config:
    """`parse_config` for the file's bytes as read (UTF-8)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path, [f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}"]
        ) from exc
    return parse_config(text, path)


def parse_config(text: str, path: Path | str = "config.yaml") -> Config:
    """Validate config text; relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        # What PyYAML's safe loader gives, without its whole-document node graph (the peak)
        data = load_yaml(text, ConfigLoader)
    except DuplicateKey as exc:
        raise ConfigError(path, [exc.describe()]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML: {problem}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError(path, ["the file must be a YAML mapping (gateway:, terminals:, ...)"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        source = yaml.compose(text, Loader=ConfigLoader)
        raise ConfigError(
            path, [describe(err, Config, PROTOCOLS, source) for err in exc.errors()]
        ) from None
    if errors := cross_reference_errors(config):
        raise ConfigError(path, errors)
    _share_equal_points(config)
    return _resolve_paths(config, path.parent)


def cross_reference_errors(config: Config) -> list[str]:
    """What each part of a valid config says about another that is not so: data checks of
    points no terminal has, SL651 stations nothing listens for."""
    errors = []
    terminals = {t.name: t.info.points for t in config.terminals}
    for key in config.checks.data:
        problem = _point_key_problem(key, terminals)
        if problem:
            errors.append(f"{key_path(['checks', 'data', key], ())}: {problem}")
    if problem := unreachable_stations(config.sl651, config.terminals):
        errors.append(f"sl651: {problem}")
    return errors


def _point_key_problem(key: str, terminals: dict[str, tuple[str, ...] | None]) -> str | None:
    """Why a `<terminal>.<point>` key names no configured point (None when it does; any point
    of a terminal that decides what it sends, an SL651 station)."""
    known = [f"{t}.{p}" for t, points in terminals.items() for p in points or ()]
    close = nearest(key, known)
    hint = f" (did you mean {close!r}?)" if close else ""
    where = split_key(key, list(terminals))
    if where is None:
        names = ", ".join(terminals) or "none configured"
        return f"names no terminal: keys are <terminal>.<point> (terminals: {names}){hint}"
    name, point = where
    points = terminals[name]
    if points is None or point in points:
        return None
    return f"terminal {name!r} has no point {point!r}{hint}"


def _share_equal_points(config: Config) -> None:
    """Points configured alike on several terminals become one object (a site's terminals of
    one model have one register map): a frozen PointConfig is a value, and each took about
    0.8 KB, 16 MB for a thousand terminals of twenty points. The lists are the config's own,
    fresh from validation: nothing has seen them yet."""
    shared: dict[tuple[Any, ...], PointConfig] = {}
    for terminal in config.terminals_of(ModbusTcpTerminal, ModbusRtuTerminal):
        points = terminal.points
        for i, point in enumerate(points):
            # repr() of floats: 0.0 and -0.0 are equal, and not the same offset
            fields = tuple(repr(v) if isinstance(v, float) else v for v in point.__dict__.values())
            key = (type(point), fields, frozenset(point.model_fields_set))
            points[i] = shared.setdefault(key, point)


def _resolve_paths(config: Config, base: Path) -> Config:
    updates: dict[str, Any] = {}
    if not config.state_dir.is_absolute():
        updates["state_dir"] = (base / config.state_dir).resolve()
    if config.jsonl.path is not None and not config.jsonl.path.is_absolute():
        jsonl = config.jsonl.model_copy(update={"path": (base / config.jsonl.path).resolve()})
        updates["jsonl"] = jsonl
    if not config.control.socket.is_absolute():
        socket = (base / config.control.socket).resolve()
        updates["control"] = config.control.model_copy(update={"socket": socket})
    tls = config.uplink.tls
    resolved = {
        name: (base / path).resolve()
        for name in ("ca", "cert", "key")
        if (path := getattr(tls, name)) is not None and not path.is_absolute()
    }
    if resolved:
        uplink_tls = tls.model_copy(update=resolved)
        updates["uplink"] = config.uplink.model_copy(update={"tls": uplink_tls})
    update_paths = {
        name: (base / path).resolve()
        for name in ("trusted_root", "inbox")
        if (path := getattr(config.update, name)) is not None and not path.is_absolute()
    }
    if update_paths:
        updates["update"] = config.update.model_copy(update=update_paths)
    engineers = [
        e.model_copy(update={"public_key": str((base / e.public_key).resolve())})
        if not e.is_pem and not Path(e.public_key).is_absolute()
        else e
        for e in config.diagnosis.engineers
    ]
    if engineers != config.diagnosis.engineers:
        updates["diagnosis"] = config.diagnosis.model_copy(update={"engineers": engineers})
    return config.model_copy(update=updates) if updates else config

"""Service settings: built once from the environment (and optionally a file), then frozen.

Every variable is prefixed ``SIGNING_KEYS_``. Regions are listed in ``SIGNING_KEYS_REGIONS``
as ``name:cloud`` pairs (an optional third field is a priority, lower first); each region's
DSN comes from its own variable so that a Kubernetes Secret can feed it by reference::

    SIGNING_KEYS_REGIONS=aws-us-east-1:aws,gcp-us-central1:gcp,aws-eu-west-1:aws
    SIGNING_KEYS_LOCAL_REGION=aws-us-east-1
    SIGNING_KEYS_DSN_AWS_US_EAST_1=postgresql://user:pass@host:5432/signing_keys
    ...

``SIGNING_KEYS_CONFIG_FILE`` may name a JSON file whose keys are the same names without the
prefix, lower-cased (``{"local_region": "…", "dsn_aws_us_east_1": "…"}``); the environment wins.
A bad value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

PREFIX = "SIGNING_KEYS_"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 50051
MAX_WORKERS = 64

AccessLogMode = Literal["off", "sampled", "all"]
LOG_LEVELS = ("debug", "info", "warning", "error")

_REGION_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_T = TypeVar("_T")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RegionSettings:
    """One database region: where it is and how to reach it."""

    name: str
    cloud: str
    dsn: str = field(repr=False)  # carries a password: never in a repr or a log line
    priority: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    """Timeouts and health thresholds of the locality router (seconds)."""

    connect_timeout: float = 1.0
    acquire_timeout: float = 1.0
    statement_timeout: float = 2.0
    request_deadline: float = 2.0
    probe_interval: float = 0.2
    probe_timeout: float = 0.5
    fall: int = 2
    rise: int = 2
    hold_down: float = 3.0
    max_replica_lag: float = 5.0
    hedge_delay: float | None = 0.1
    pool_min_size: int = 1
    pool_max_size: int = 10
    # A write attempt's longest share of the deadline while another writable region is left
    # to try: a hung region leaves the rest of the deadline to the next one.
    write_attempt_timeout: float = 0.8
    # Retries (after a failed attempt; not hedges) per 10 s: at most this share of the
    # requests begun, plus the floor below — so that a brownout does not multiply the load.
    retry_budget_ratio: float = 0.2
    retry_budget_min_per_second: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.retry_budget_ratio <= 1.0:
            raise SettingsError(f"{PREFIX}RETRY_BUDGET_RATIO must be within 0..1")
        if self.pool_min_size > self.pool_max_size:
            raise SettingsError(f"{PREFIX}POOL_MIN_SIZE must not exceed {PREFIX}POOL_MAX_SIZE")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything the service reads from its environment, validated when built."""

    regions: tuple[RegionSettings, ...]
    local_region: str
    http_host: str = "0.0.0.0"  # noqa: S104 - a service listens on all interfaces by default
    http_port: int = DEFAULT_HTTP_PORT
    grpc_host: str = "0.0.0.0"  # noqa: S104
    grpc_port: int = DEFAULT_GRPC_PORT
    grpc_enabled: bool = True
    grpc_header_timeout: float = 10.0
    grpc_max_connections_per_client: int = 256
    router: RouterSettings = field(default_factory=RouterSettings)
    log_level: str = "info"
    access_log: AccessLogMode = "sampled"
    access_log_sample_rate: float = 0.01
    slow_request_seconds: float = 0.5
    max_body_bytes: int = 64 * 1024
    http_header_timeout: float = 10.0
    http_body_timeout: float = 10.0
    # Above the idle timeouts of the common load balancers (60 s), so that they, not we,
    # close an idle connection: closing it under them races their next request.
    http_idle_timeout: float = 75.0
    http_max_connections_per_client: int = 256
    max_token_bytes: int = 8 * 1024
    credential_cache_ttl: float = 30.0
    auth_failures_per_client: float = 10.0
    auth_failures_per_token: float = 10.0
    key_cache_size: int = 100_000
    negative_cache_ttl: float = 0.5
    negative_cache_size: int = 10_000
    change_poll_interval: float = 0.2
    change_overlap: float = 5.0
    # The change feed reads only where the data is at most this old, so a change made in any
    # region is enforced here within this plus a poll: the revocation bound (0.8 s).
    change_max_data_age: float = 0.6
    # The anonymous JWK Set (opt-in per environment): its Cache-Control, how long an
    # environment's opt-in is remembered, and requests a second per client address.
    public_jwks_max_age: int = 300
    public_jwks_stale_if_error: int = 86_400
    public_jwks_setting_ttl: float = 2.0
    public_jwks_per_client: float = 50.0
    max_watch_streams: int = 1000
    max_watch_streams_per_caller: int = 100
    max_snapshots_per_caller: int = 2
    max_snapshot_reads: int = 4
    # A WatchSigningKeys stream with no change to send for this long sends a PROGRESS event
    # with the current position; one live this long (less up to a tenth) is ended with
    # UNAVAILABLE, to be resumed from its last position (on any instance).
    watch_progress_interval: float = 10.0
    watch_max_age: float = 1800.0
    max_staleness: float = 300.0
    clock_skew: float = 30.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None  # mTLS: a verified client certificate is required
    # How often the served certificate and key files are checked for a change (a renewed
    # certificate, a rotated Kubernetes Secret); a change is loaded for new handshakes.
    tls_reload_interval: float = 10.0
    # TLS to the database for every region whose DSN does not say otherwise: the CA file
    # (`sslrootcert`), and the client certificate and key (`sslcert`, `sslkey`). Merged into
    # each DSN, so that a mounted Secret serves every region without editing the DSNs.
    db_ca_file: str | None = None
    db_cert_file: str | None = None
    db_key_file: str | None = None
    # The deadline of a key write (create, import, revoke), apart from reads'
    # (REQUEST_DEADLINE): on CockroachDB such a write commits to a GLOBAL table, whose commit
    # waits out the cluster's maximum clock offset, and may need a 40001 retry on top.
    # None: REQUEST_DEADLINE (right for PostgreSQL).
    write_deadline: float | None = None
    # On SIGTERM: how long /readyz (and gRPC health) fail while the listeners still serve, so
    # that load balancers and Kubernetes endpoints stop sending before anything is closed.
    drain_delay: float = 0.0
    # Serving processes sharing the HTTP and gRPC ports (SO_REUSEPORT), each with its own
    # event loop, cache and change feed; `auto` (the image's default) is one per usable core.
    # 1: this process serves alone, as `make run` does.
    workers: int = 1
    sql_dir: str | None = None  # where the migrations are; None: sql/ beside the package

    def __post_init__(self) -> None:
        if not self.regions:
            raise SettingsError(f"{PREFIX}REGIONS must list at least one region")
        names = [region.name for region in self.regions]
        if len(set(names)) != len(names):
            raise SettingsError(f"{PREFIX}REGIONS lists a region twice: {names}")
        if self.local_region not in names:
            raise SettingsError(
                f"{PREFIX}LOCAL_REGION={self.local_region!r} is not one of "
                f"{PREFIX}REGIONS ({', '.join(names)})"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise SettingsError(f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise SettingsError(
                f"{PREFIX}TLS_CLIENT_CA_FILE needs TLS served: set {PREFIX}TLS_CERT_FILE and "
                f"{PREFIX}TLS_KEY_FILE as well"
            )
        pool = self.router.pool_max_size
        if pool > 1 and self.max_snapshot_reads >= pool:
            raise SettingsError(
                f"{PREFIX}MAX_SNAPSHOT_READS={self.max_snapshot_reads} must be below "
                f"{PREFIX}POOL_MAX_SIZE ({pool}): snapshots must leave connections for the "
                "other queries"
            )
        # The change feed re-reads `overlap` seconds behind its watermark, which must cover
        # the longest write (its deadline) plus a poll, or a slow commit could be skipped.
        # Replication lag needs no room: the watermark is the newest stamp the feed has read,
        # and every region replays commits in order, so a row stamped more than one write's
        # length before it committed earlier and was in the same read.
        needed = self.longest_write + self.change_poll_interval
        if self.change_overlap <= needed:
            raise SettingsError(
                f"{PREFIX}CHANGE_OVERLAP={self.change_overlap} must exceed the longest write "
                f"({PREFIX}REQUEST_DEADLINE or {PREFIX}WRITE_DEADLINE) + "
                f"{PREFIX}CHANGE_POLL_INTERVAL ({needed:g})"
            )
        if (self.db_cert_file is None) != (self.db_key_file is None):
            raise SettingsError(f"{PREFIX}DB_CERT_FILE and {PREFIX}DB_KEY_FILE go together")
        if self.workers > 1 and 0 in (self.http_port, self.grpc_port if self.grpc_enabled else 1):
            # Each worker would pick a port of its own: there would be nothing to share.
            raise SettingsError(
                f"{PREFIX}WORKERS={self.workers} needs fixed ports: {PREFIX}HTTP_PORT and "
                f"{PREFIX}GRPC_PORT must not be 0"
            )

    @property
    def longest_write(self) -> float:
        """The deadline of the slowest write: a key write's, or any other's."""
        return max(self.router.request_deadline, self.write_deadline or 0.0)

    @property
    def local(self) -> RegionSettings:
        return next(region for region in self.regions if region.name == self.local_region)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: ``os.environ``) and the optional file."""
        values = _Values(os.environ if environ is None else environ)
        db_tls = _DatabaseTlsFiles(
            sslrootcert=values.optional_text("DB_CA_FILE"),
            sslcert=values.optional_text("DB_CERT_FILE"),
            sslkey=values.optional_text("DB_KEY_FILE"),
        )
        regions = tuple(_parse_regions(values, db_tls))
        # Defaults are the dataclasses' own: declared once, there.
        default = RouterSettings()
        router = RouterSettings(
            connect_timeout=values.number("CONNECT_TIMEOUT", default.connect_timeout),
            acquire_timeout=values.number("ACQUIRE_TIMEOUT", default.acquire_timeout),
            statement_timeout=values.number("STATEMENT_TIMEOUT", default.statement_timeout),
            request_deadline=values.number("REQUEST_DEADLINE", default.request_deadline),
            probe_interval=values.number("PROBE_INTERVAL", default.probe_interval),
            probe_timeout=values.number("PROBE_TIMEOUT", default.probe_timeout),
            fall=values.integer("FALL", default.fall, minimum=1),
            rise=values.integer("RISE", default.rise, minimum=1),
            hold_down=values.number("HOLD_DOWN", default.hold_down, minimum=0.0),
            max_replica_lag=values.number("MAX_REPLICA_LAG", default.max_replica_lag),
            hedge_delay=values.optional_number("HEDGE_DELAY", default.hedge_delay),
            pool_min_size=values.integer("POOL_MIN_SIZE", default.pool_min_size, minimum=0),
            pool_max_size=values.integer("POOL_MAX_SIZE", default.pool_max_size, minimum=1),
            write_attempt_timeout=values.number(
                "WRITE_ATTEMPT_TIMEOUT", default.write_attempt_timeout
            ),
            retry_budget_ratio=values.number(
                "RETRY_BUDGET_RATIO", default.retry_budget_ratio, minimum=0.0, maximum=1.0
            ),
            retry_budget_min_per_second=values.number(
                "RETRY_BUDGET_MIN_PER_SECOND", default.retry_budget_min_per_second, minimum=0.0
            ),
        )
        d = _defaults(cls)
        return cls(
            regions=regions,
            local_region=values.required("LOCAL_REGION"),
            http_host=values.text("HTTP_HOST", d["http_host"]),
            http_port=values.integer("HTTP_PORT", d["http_port"], minimum=0, maximum=65535),
            grpc_host=values.text("GRPC_HOST", d["grpc_host"]),
            grpc_port=values.integer("GRPC_PORT", d["grpc_port"], minimum=0, maximum=65535),
            grpc_enabled=values.boolean("GRPC_ENABLED", d["grpc_enabled"]),
            grpc_header_timeout=values.number("GRPC_HEADER_TIMEOUT", d["grpc_header_timeout"]),
            grpc_max_connections_per_client=values.integer(
                "GRPC_MAX_CONNECTIONS_PER_CLIENT", d["grpc_max_connections_per_client"], minimum=1
            ),
            router=router,
            log_level=values.choice("LOG_LEVEL", d["log_level"], LOG_LEVELS),
            access_log=values.choice("ACCESS_LOG", d["access_log"], get_args(AccessLogMode)),  # type: ignore[arg-type]
            access_log_sample_rate=values.number(
                "ACCESS_LOG_SAMPLE_RATE", d["access_log_sample_rate"], minimum=0.0, maximum=1.0
            ),
            slow_request_seconds=values.number("SLOW_REQUEST_SECONDS", d["slow_request_seconds"]),
            max_body_bytes=values.integer("MAX_BODY_BYTES", d["max_body_bytes"], minimum=1024),
            http_header_timeout=values.number("HTTP_HEADER_TIMEOUT", d["http_header_timeout"]),
            http_body_timeout=values.number("HTTP_BODY_TIMEOUT", d["http_body_timeout"]),
            http_idle_timeout=values.number("HTTP_IDLE_TIMEOUT", d["http_idle_timeout"]),
            http_max_connections_per_client=values.integer(
                "HTTP_MAX_CONNECTIONS_PER_CLIENT", d["http_max_connections_per_client"], minimum=1
            ),
            max_token_bytes=values.integer("MAX_TOKEN_BYTES", d["max_token_bytes"], minimum=256),
            credential_cache_ttl=values.number(
                "CREDENTIAL_CACHE_TTL", d["credential_cache_ttl"], minimum=0.0
            ),
            auth_failures_per_client=values.number(
                "AUTH_FAILURES_PER_CLIENT", d["auth_failures_per_client"], minimum=1.0
            ),
            auth_failures_per_token=values.number(
                "AUTH_FAILURES_PER_TOKEN", d["auth_failures_per_token"], minimum=1.0
            ),
            key_cache_size=values.integer("KEY_CACHE_SIZE", d["key_cache_size"], minimum=1),
            negative_cache_ttl=values.number(
                "NEGATIVE_CACHE_TTL", d["negative_cache_ttl"], minimum=0.0
            ),
            negative_cache_size=values.integer(
                "NEGATIVE_CACHE_SIZE", d["negative_cache_size"], minimum=1
            ),
            change_poll_interval=values.number("CHANGE_POLL_INTERVAL", d["change_poll_interval"]),
            change_overlap=values.number("CHANGE_OVERLAP", d["change_overlap"]),
            change_max_data_age=values.number("CHANGE_MAX_DATA_AGE", d["change_max_data_age"]),
            public_jwks_max_age=values.integer(
                "PUBLIC_JWKS_MAX_AGE", d["public_jwks_max_age"], minimum=0
            ),
            public_jwks_stale_if_error=values.integer(
                "PUBLIC_JWKS_STALE_IF_ERROR", d["public_jwks_stale_if_error"], minimum=0
            ),
            public_jwks_setting_ttl=values.number(
                "PUBLIC_JWKS_SETTING_TTL", d["public_jwks_setting_ttl"], minimum=0.0
            ),
            public_jwks_per_client=values.number(
                "PUBLIC_JWKS_PER_CLIENT", d["public_jwks_per_client"], minimum=1.0
            ),
            max_watch_streams=values.integer(
                "MAX_WATCH_STREAMS", d["max_watch_streams"], minimum=1
            ),
            max_watch_streams_per_caller=values.integer(
                "MAX_WATCH_STREAMS_PER_CALLER", d["max_watch_streams_per_caller"], minimum=1
            ),
            max_snapshots_per_caller=values.integer(
                "MAX_SNAPSHOTS_PER_CALLER", d["max_snapshots_per_caller"], minimum=1
            ),
            max_snapshot_reads=values.integer(
                "MAX_SNAPSHOT_READS", d["max_snapshot_reads"], minimum=1
            ),
            watch_progress_interval=values.number(
                "WATCH_PROGRESS_INTERVAL", d["watch_progress_interval"]
            ),
            watch_max_age=values.number("WATCH_MAX_AGE", d["watch_max_age"]),
            max_staleness=values.number("MAX_STALENESS", d["max_staleness"]),
            clock_skew=values.number("CLOCK_SKEW", d["clock_skew"], minimum=0.0),
            tls_cert_file=values.optional_text("TLS_CERT_FILE"),
            tls_key_file=values.optional_text("TLS_KEY_FILE"),
            tls_client_ca_file=values.optional_text("TLS_CLIENT_CA_FILE"),
            tls_reload_interval=values.number("TLS_RELOAD_INTERVAL", d["tls_reload_interval"]),
            db_ca_file=db_tls.sslrootcert,
            db_cert_file=db_tls.sslcert,
            db_key_file=db_tls.sslkey,
            write_deadline=values.number_or_none("WRITE_DEADLINE"),
            drain_delay=values.number("DRAIN_DELAY", d["drain_delay"], minimum=0.0),
            workers=_workers(values.text("WORKERS", str(d["workers"]))),
            sql_dir=values.optional_text("SQL_DIR"),
        )


def _workers(raw: str) -> int:
    """``SIGNING_KEYS_WORKERS``: a count from 1, or ``auto`` (:func:`usable_cpus`)."""
    if raw.strip().lower() == "auto":
        return usable_cpus()
    try:
        count = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}WORKERS={raw!r} is not an integer or 'auto'") from None
    _check_range("WORKERS", count, 1, MAX_WORKERS)
    return count


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: those it may be scheduled on, fewer if a cgroup (v2)
    quota — a container's CPU limit — allows less; a fractional quota rounds up. ``os.
    cpu_count()`` alone counts the host's cores, which a container may not get."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota readable: no limit known beyond the affinity
    return max(1, min(cores, MAX_WORKERS))


def _defaults(cls: type[Settings]) -> dict[str, Any]:
    return {item.name: item.default for item in fields(cls) if item.default is not MISSING}


def region_dsn_variable(region_name: str) -> str:
    """The variable holding a region's DSN: ``aws-us-east-1`` → ``…_DSN_AWS_US_EAST_1``."""
    return f"{PREFIX}DSN_{region_name.upper().replace('-', '_')}"


@dataclass(frozen=True, slots=True)
class _DatabaseTlsFiles:
    """The DSN parameters that ``SIGNING_KEYS_DB_*_FILE`` give every region's DSN."""

    sslrootcert: str | None
    sslcert: str | None
    sslkey: str | None

    def merge_into(self, dsn: str) -> str:
        """``dsn`` with each file this names added, unless the DSN names its own."""
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        present = {key for key, _ in query}
        added = [
            (key, value)
            for key, value in (
                ("sslrootcert", self.sslrootcert),
                ("sslcert", self.sslcert),
                ("sslkey", self.sslkey),
            )
            if value is not None and key not in present
        ]
        if not added:
            return dsn
        return urllib.parse.urlunsplit(
            parts._replace(query=urllib.parse.urlencode([*query, *added], safe="/"))
        )


def _parse_regions(values: _Values, db_tls: _DatabaseTlsFiles) -> list[RegionSettings]:
    spec = values.required("REGIONS")
    regions = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        fields = item.split(":")
        if len(fields) not in (2, 3) or not all(fields):
            raise SettingsError(
                f"{PREFIX}REGIONS entry {item!r} must be name:cloud or name:cloud:priority"
            )
        name, cloud = fields[0], fields[1]
        if not _REGION_NAME.match(name):
            raise SettingsError(
                f"{PREFIX}REGIONS region name {name!r} must be lower-case letters, digits and '-'"
            )
        priority = 0
        if len(fields) == 3:
            try:
                priority = int(fields[2])
            except ValueError:
                raise SettingsError(
                    f"{PREFIX}REGIONS entry {item!r}: priority must be an integer"
                ) from None
        dsn_key = region_dsn_variable(name).removeprefix(PREFIX)
        dsn = values.required(dsn_key)
        if not dsn.startswith(("postgres://", "postgresql://")):
            raise SettingsError(f"{PREFIX}{dsn_key} must be a postgresql:// URL")
        dsn = db_tls.merge_into(dsn)
        _check_dsn_tls(f"{PREFIX}{dsn_key}", dsn, root_from_env=values.env("PGSSLROOTCERT"))
        regions.append(RegionSettings(name=name, cloud=cloud, dsn=dsn, priority=priority))
    return regions


# sslmode values that verify the server's certificate, and so need the CA that issued it.
_VERIFYING_SSL_MODES = frozenset({"verify-ca", "verify-full"})
_TLS_FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey")


def _check_dsn_tls(variable: str, dsn: str, *, root_from_env: str | None) -> None:
    """A DSN's TLS parameters, checked at start-up rather than at every connection.

    asyncpg (0.30 and later) reads ``sslmode``, ``sslrootcert``, ``sslcert`` and ``sslkey``
    from the DSN itself; for a verifying ``sslmode`` without ``sslrootcert`` it falls back to
    ``~/.postgresql/root.crt``, which an image whose home is ``/nonexistent`` never has. The
    messages name the variable and the parameter, never the DSN (it holds a password).
    """
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    params = {key: values[-1] for key, values in query.items() if values}
    if params.get("sslmode") in _VERIFYING_SSL_MODES and not (
        params.get("sslrootcert") or root_from_env
    ):
        raise SettingsError(
            f"{variable}: sslmode={params['sslmode']} needs the CA certificates that issued "
            f"the server's: set {PREFIX}DB_CA_FILE, or sslrootcert=<file> in the DSN"
        )
    for parameter in _TLS_FILE_PARAMETERS:
        path = params.get(parameter)
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{variable}: {parameter} file {path!r} cannot be read")


class _Values:
    """Reads prefixed variables from the environment, falling back to the optional file."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._file: dict[str, str] = {}
        path = environ.get(f"{PREFIX}CONFIG_FILE")
        if path:
            try:
                loaded = json.loads(Path(path).read_text())
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{PREFIX}CONFIG_FILE={path!r} cannot be read: {exc}") from exc
            if not isinstance(loaded, dict):
                raise SettingsError(f"{PREFIX}CONFIG_FILE={path!r} must hold a JSON object")
            self._file = {str(k).upper(): str(v) for k, v in loaded.items()}

    def get(self, key: str) -> str | None:
        value = self._environ.get(PREFIX + key)
        if value is None:
            value = self._file.get(key)
        return value if value not in (None, "") else None

    def env(self, name: str) -> str | None:
        """An unprefixed variable of the environment (one that libraries read themselves)."""
        return self._environ.get(name) or None

    def required(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise SettingsError(f"{PREFIX}{key} is required")
        return value

    def text(self, key: str, default: str) -> str:
        return self.get(key) or default

    def optional_text(self, key: str) -> str | None:
        return self.get(key)

    def _convert(self, key: str, default: _T, convert: Callable[[str], _T], what: str) -> _T:
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return convert(raw)
        except ValueError:
            raise SettingsError(f"{PREFIX}{key}={raw!r} is not {what}") from None

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._convert(key, default, int, "an integer")
        _check_range(key, value, minimum, maximum)
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = 0.001,
        maximum: float | None = None,
    ) -> float:
        value = self._convert(key, default, float, "a number")
        _check_range(key, value, minimum, maximum)
        return value

    def optional_number(self, key: str, default: float | None) -> float | None:
        raw = self.get(key)
        if raw is not None and raw.lower() in ("off", "none", "0"):
            return None
        return self.number(key, default) if default is not None else None

    def number_or_none(self, key: str) -> float | None:
        """A number when set, else None (a default decided elsewhere)."""
        return None if self.get(key) is None else self.number(key, 0.0)

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.get(key)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{PREFIX}{key}={raw!r} is not a boolean (true/false)")

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = (self.get(key) or default).lower()
        if value not in options:
            raise SettingsError(f"{PREFIX}{key}={value!r} must be one of {', '.join(options)}")
        return value


def _check_range(key: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if not math.isfinite(value):
        raise SettingsError(f"{PREFIX}{key}={value} must be a finite number")
    if minimum is not None and value < minimum:
        raise SettingsError(f"{PREFIX}{key}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{PREFIX}{key}={value} must be at most {maximum}")

"""Secret hygiene over a whole test run: no private key, access-token secret or
``Authorization`` value reaches a log line or a database table.

A pytest plugin (registered from the root conftest). While the run lasts it

- taps every log line the process emits: structlog's own loggers (``PrintLogger`` and its
  kin, whatever configuration a test installs, and ``structlog.testing.capture_logs``) and
  every standard-library record a handler receives — so it sees what ``configure_logging``
  renders as JSON as well as structlog's development output;
- records the secret of every access token minted in the process (at
  :func:`service.core.auth.new_access_token`, which :meth:`Authenticator.issue` and the
  tests' helpers go through);
- dumps every table of the harness's database (``signing_keys``, the only one it creates) of
  each :class:`~harness.LocalTopology` just before the topology stops, from a region that is
  still running.

Each test's log lines are scanned when it finishes (and then dropped, so memory stays
bounded), the tables when their topology stops, the rest at the end of the session, for:

- a PEM private key (its ``-----BEGIN … PRIVATE KEY-----`` line, also base64-encoded as the
  create response carries it, and hex-encoded as a ``bytea`` renders);
- a JWK private member (``d``, ``p``, ``q``, ``dp``, ``dq``, ``qi``) with a value;
- an access-token secret minted during the run;
- an ``Authorization`` value: a header with ``Basic``/``Bearer`` credentials, or the
  base64 of ``skt_…:…`` anywhere.

Any hit fails the run (exit status 1) with a report of where (the test, or the topology and
table) and which kind — never the matched text. What it cannot see: the logs of child
processes (the CLI tests' subprocesses, the Docker and Helm tests' containers), and
secrets minted in them.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest
import structlog
import structlog.testing

import service.core.auth
from harness import LocalTopology
from harness.cluster import DATABASE

# --- What counts as a leak -------------------------------------------------------------------

PEM_PRIVATE: Final = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# base64 of "-----BEGIN " (how the create response carries a PEM); decoded to see what follows.
PEM_IN_BASE64: Final = re.compile(r"LS0tLS1CRUdJTi[A-Za-z0-9+/]{20,}")
JWK_PRIVATE: Final = re.compile(
    r"""(?<![\w-])["']?(?:d|p|q|dp|dq|qi)["']?\s*[:=]\s*["']?[A-Za-z0-9_-]{40,}"""
)
AUTHORIZATION: Final = re.compile(
    r"""(?i)authorization["']?\s*[:=]\s*["']?(?:basic|bearer)\s+[^\s"',}]+"""
    r"|\bBasic\s+c2t0X|\bBearer\s+skt_\S+"
    # base64 of "skt_" and more: an encoded "id:secret" wherever it stands.
    r"|c2t0X[A-Za-z0-9+/]{30,}"
)
SECRET_SHAPED: Final = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
BYTEA_HEX: Final = re.compile(r"\\\\?x((?:[0-9a-f]{2}){8,})")


@dataclass(frozen=True)
class Finding:
    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}"


def scan(text: str, secrets: frozenset[str]) -> list[str]:
    """The kinds of leak in ``text`` (each named once); never the text that matched."""
    kinds = []
    if PEM_PRIVATE.search(text) or any(
        "PRIVATE KEY" in _decoded_base64(match.group()) for match in PEM_IN_BASE64.finditer(text)
    ):
        kinds.append("PEM private key")
    if JWK_PRIVATE.search(text):
        kinds.append("JWK private member (d, p, q, dp, dq, qi)")
    if AUTHORIZATION.search(text):
        kinds.append("Authorization value")
    if secrets and not secrets.isdisjoint(SECRET_SHAPED.findall(text)):
        kinds.append("access-token secret")
    return kinds


def _decoded_base64(text: str) -> str:
    usable = text[: len(text) // 4 * 4]
    try:
        return base64.b64decode(usable).decode("latin-1")
    except (binascii.Error, ValueError):
        return ""


def with_bytea_decoded(text: str) -> str:
    """``text`` followed by every hex ``bytea`` in it decoded (as Latin-1), so that a
    secret or a PEM stored as bytes is found too."""
    decoded = [
        bytes.fromhex(match.group(1)).decode("latin-1") for match in BYTEA_HEX.finditer(text)
    ]
    return "\n".join([text, *decoded])


# --- Taps ------------------------------------------------------------------------------------


class Hygiene:
    """The run's state: log lines not scanned yet, the secrets minted, what was found."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.secrets: set[str] = set()
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.scanned_lines = 0
        self.scanned_tables = 0
        self.seconds = 0.0
        self._last_record: logging.LogRecord | None = None
        self._undo: list[Callable[[], None]] = []

    # Taps: called on every log line, so as cheap as an append.

    def line(self, text: object) -> None:
        self.lines.append(text if isinstance(text, str) else repr(text))

    def record(self, record: logging.LogRecord) -> None:
        if record is self._last_record:  # the same record, handed to the next handler
            return
        self._last_record = record
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: its parts are still what was logged
            message = f"{record.msg!r} {record.args!r}"
        self.lines.append(message)
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))

    def minted(self, secret: str) -> None:
        self.secrets.add(secret)

    # Scans.

    def scan_lines(self, where: str) -> None:
        if not self.lines:
            return
        started = time.perf_counter()
        lines, self.lines = self.lines, []
        self._last_record = None
        self.scanned_lines += len(lines)
        for kind in scan("\n".join(lines), frozenset(self.secrets)):
            self.findings.append(Finding(f"log lines of {where}", kind))
        self.seconds += time.perf_counter() - started

    def scan_topology(self, topology: LocalTopology, where: str) -> None:
        started = time.perf_counter()
        try:
            dumps = dump_tables(topology)
        except Exception as exc:  # a damaged topology: say so, without failing its teardown
            self.notes.append(f"{where} could not be read ({type(exc).__name__}): not scanned")
            return
        secrets = frozenset(self.secrets)
        for table, text in dumps.items():
            self.scanned_tables += 1
            for kind in scan(with_bytea_decoded(text), secrets):
                self.findings.append(Finding(f"table {table} of {where}", kind))
        self.seconds += time.perf_counter() - started

    # Installation.

    def install(self) -> None:
        self._patch(logging.Handler, "handle", _tapping_handle(self))
        for cls in (structlog.PrintLogger, structlog.WriteLogger, structlog.BytesLogger):
            original = cls.msg
            tapped = _tapping_msg(self, original)
            for name in [n for n in dir(cls) if getattr(cls, n) is original]:
                self._patch(cls, name, tapped)
        self._patch(structlog.testing.LogCapture, "__call__", _tapping_capture(self))
        self._patch(service.core.auth, "new_access_token", _recording_mint(self))
        self._patch(LocalTopology, "stop", _scanning_stop(self))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        original = owner.__dict__[name] if name in vars(owner) else getattr(owner, name)
        setattr(owner, name, replacement)
        self._undo.append(lambda: setattr(owner, name, original))


def _tapping_handle(hygiene: Hygiene) -> Callable[..., Any]:
    original = logging.Handler.handle

    def handle(self: logging.Handler, record: logging.LogRecord) -> Any:
        hygiene.record(record)
        return original(self, record)

    return handle


def _tapping_msg(hygiene: Hygiene, original: Callable[..., None]) -> Callable[..., None]:
    def msg(self: Any, message: Any) -> None:
        hygiene.line(message)
        original(self, message)

    return msg


def _tapping_capture(hygiene: Hygiene) -> Callable[..., Any]:
    original = structlog.testing.LogCapture.__call__

    def capture(self: Any, logger: Any, method_name: str, event_dict: Any) -> Any:
        hygiene.line(event_dict)
        return original(self, logger, method_name, event_dict)

    return capture


def _recording_mint(hygiene: Hygiene) -> Callable[..., Any]:
    original = service.core.auth.new_access_token

    def new_access_token(*args: Any, **kwargs: Any) -> Any:
        token, secret = original(*args, **kwargs)
        hygiene.minted(secret)
        return token, secret

    return new_access_token


def _scanning_stop(hygiene: Hygiene) -> Callable[[LocalTopology], None]:
    original = LocalTopology.stop

    def stop(self: LocalTopology) -> None:
        if getattr(self, "_state", None) == "running":
            hygiene.scan_topology(self, f"the topology in {self.base_dir}")
        original(self)

    return stop


def hide_traceback_locals() -> None:
    """Unconfigured, structlog renders for development: with ``rich`` installed (schemathesis
    brings it), an exception's traceback shows every frame's local variables — a gRPC
    call's metadata, ``Authorization`` included. The service's own configuration
    (:func:`service.logs.configure_logging`) renders plain tracebacks; tests that leave
    structlog unconfigured get the same here. ``reset_defaults`` reinstalls the very
    renderer changed here, so this holds for the whole run."""
    for processor in structlog.get_config()["processors"]:
        formatter: Any = getattr(processor, "_exception_formatter", None)
        if hasattr(formatter, "show_locals"):
            formatter.show_locals = False
    default: Any = getattr(structlog.dev, "default_exception_formatter", None)
    if hasattr(default, "show_locals"):
        default.show_locals = False


# --- The database ----------------------------------------------------------------------------

TABLES: Final = """
    SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
    FROM information_schema.tables
    WHERE table_type = 'BASE TABLE'
      AND table_schema NOT IN ('pg_catalog', 'information_schema')
    ORDER BY 1
"""


def dump_tables(topology: LocalTopology) -> dict[str, str]:
    """Every row of every table of the harness's database, as text, read from the first
    region that runs unpaused (the primary first: standbys may trail it)."""
    name = _readable_region(topology)
    if name is None:
        raise RuntimeError("no region is running")
    tables = [row[0] for row in topology.query(name, TABLES, timeout=10.0)]
    return {
        f"{DATABASE}.{table}": "\n".join(
            str(row[0])
            for row in topology.query(name, f"SELECT t::text FROM {table} AS t", timeout=10.0)
        )
        for table in tables
    }


def _readable_region(topology: LocalTopology) -> str | None:
    names = [topology.primary, *(n for n in topology.region_names if n != topology.primary)]
    for name in names:
        region = topology.region(name)
        if region.is_running and region.paused is None:
            return name
    return None


# --- Hooks ---------------------------------------------------------------------------------


class HygienePlugin:
    """The hooks, around one run's :class:`Hygiene`."""

    def __init__(self, hygiene: Hygiene) -> None:
        self.hygiene = hygiene

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self.hygiene.scan_lines(nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.hygiene.scan_lines("the session (outside any test)")
        if self.hygiene.findings and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        hygiene = self.hygiene
        summary = (
            f"{hygiene.scanned_lines} log lines, {hygiene.scanned_tables} tables, "
            f"{len(hygiene.secrets)} token secrets checked in {hygiene.seconds:.2f} s"
        )
        for note in hygiene.notes:
            terminalreporter.write_line(f"secret hygiene: {note}", yellow=True)
        if not hygiene.findings:
            terminalreporter.write_line(f"secret hygiene: clean ({summary})")
            return
        terminalreporter.section("secret hygiene: LEAKS", red=True, bold=True)
        for finding in dict.fromkeys(hygiene.findings):
            terminalreporter.write_line(f"  {finding}", red=True)
        terminalreporter.write_line(f"({summary}; the run fails)")


_PLUGIN: Final = "secret-hygiene"


def pytest_configure(config: pytest.Config) -> None:
    hygiene = Hygiene()
    hygiene.install()
    hide_traceback_locals()
    config.pluginmanager.register(HygienePlugin(hygiene), _PLUGIN)


def pytest_unconfigure(config: pytest.Config) -> None:
    plugin = config.pluginmanager.get_plugin(_PLUGIN)
    if isinstance(plugin, HygienePlugin):
        plugin.hygiene.uninstall()
        config.pluginmanager.unregister(plugin)

"""The server-side TLS context, one recipe for HTTP and gRPC, and the client-certificate rule
both transports apply.

>>> http_context = server_context(settings)
>>> grpc_context = server_context(settings, alpn=("h2",))  # gRPC is HTTP/2 only

Mutual TLS (``SIGNING_KEYS_TLS_CLIENT_CA_FILE``) *adds* to the access tokens, it replaces
nothing: a client must present a certificate that the configured CA issued, and still
authenticate every call with its token, whose scopes and environments alone decide what it
may do. A certificate from another CA fails the TLS handshake. A connection without a
certificate completes the handshake, so that the liveness and readiness probes of
orchestrators (which present none) still work: :data:`CERTIFICATE_EXEMPT_HTTP_PATHS` and
the gRPC health service answer it, and every other call is refused as unauthenticated (401,
``UNAUTHENTICATED``) — :func:`has_client_certificate` is the check.

A renewed certificate needs no restart: each context checks its certificate and key files at
a handshake at most every ``SIGNING_KEYS_TLS_RELOAD_INTERVAL`` seconds and, when they changed
(a cert-manager renewal, a Kubernetes Secret update swapping the mounted files), loads them
for that handshake and every later one. A pair that does not load (a half-written update, a
key that does not match) is logged and skipped; the previous certificate goes on serving.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog

from service.settings import Settings

log = structlog.get_logger(__name__)

# What orchestrators call without a client certificate: liveness and readiness.
CERTIFICATE_EXEMPT_HTTP_PATHS: Final = frozenset({"/healthz", "/readyz"})
CERTIFICATE_REQUIRED: Final = "a client certificate issued by the configured CA is required"


def server_context(settings: Settings, *, alpn: Sequence[str] = ()) -> ssl.SSLContext | None:
    """The context serving ``settings``' certificate and key, or None when TLS is off; with a
    client CA, it verifies the certificate a client presents against that CA.

    ``alpn``: the protocols to offer in the handshake, most preferred first.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files = CertificateFiles(
        settings.tls_cert_file, settings.tls_key_file, interval=settings.tls_reload_interval
    )
    files.load_into(context)
    # Called at every handshake, with or without SNI (OpenSSL's servername callback).
    context.sni_callback = files.on_handshake
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        # Optional at the handshake (probes present none); required per call, see above.
        context.verify_mode = ssl.CERT_OPTIONAL
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def requires_client_certificate(settings: Settings) -> bool:
    return settings.tls_client_ca_file is not None


def has_client_certificate(ssl_object: Any) -> bool:
    """Whether a connection's peer presented a certificate the handshake verified (with
    ``CERT_OPTIONAL``, a certificate that failed verification ends the handshake, so one
    present is one verified)."""
    return ssl_object is not None and bool(ssl_object.getpeercert())


_Stamp = tuple[tuple[int, int, int], ...]


class CertificateFiles:
    """A certificate and key file pair, loaded again into a context when either changes.

    The change shows in what ``os.stat`` reports through symbolic links (modification time,
    inode, size): a Kubernetes Secret volume swaps a link to a new directory, an editor or
    cert-manager rewrites the file.
    """

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        *,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.interval = interval
        self.reloads = 0
        self._clock = clock
        self._stamp: _Stamp | None = None
        self._next_check = clock() + interval

    def __repr__(self) -> str:
        return f"<CertificateFiles {self.cert_file!r} reloads={self.reloads}>"

    def _read_stamp(self) -> _Stamp:
        stats = (os.stat(self.cert_file), os.stat(self.key_file))
        return tuple((st.st_mtime_ns, st.st_ino, st.st_size) for st in stats)

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the pair into ``context``; raises (leaving ``context`` as it was) when the
        pair does not load."""
        stamp = self._read_stamp()
        # A trial context first: a certificate that loads followed by a key that does not
        # would leave the live context with a mismatched pair.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            self.cert_file, self.key_file
        )
        context.load_cert_chain(self.cert_file, self.key_file)
        self._stamp = stamp

    def is_changed(self) -> bool:
        try:
            return self._read_stamp() != self._stamp
        except OSError:
            return True  # mid-swap; the load will say whether it is usable

    def on_handshake(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        """``SSLContext.sni_callback``: reload the pair if due and changed. Never raises (an
        exception here would fail the client's handshake)."""
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self.interval
        if not self.is_changed():
            return
        try:
            self.load_into(context)
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "tls_certificate_reload_failed", cert_file=self.cert_file, error=type(exc).__name__
            )
            return
        # This handshake's connection copied the old pair when it was created; give it the new.
        ssl_object.context = context
        self.reloads += 1
        log.info("tls_certificate_reloaded", cert_file=self.cert_file, reloads=self.reloads)

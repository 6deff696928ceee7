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
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any, Final

from service.settings import Settings

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
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
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

"""The server-side TLS context, one recipe for HTTP and gRPC.

>>> http_context = server_context(settings)
>>> grpc_context = server_context(settings, alpn=("h2",))  # gRPC is HTTP/2 only
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from service.settings import Settings


def server_context(settings: Settings, *, alpn: Sequence[str] = ()) -> ssl.SSLContext | None:
    """The context serving ``settings``' certificate and key, or None when TLS is off.

    ``alpn``: the protocols to offer in the handshake, most preferred first.
    """
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context

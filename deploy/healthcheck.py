"""The container's HEALTHCHECK: exit 0 if this instance's ``/healthz`` answers 200, else 1.

Standard library only (the image carries no curl). The port, address and TLS come from the
same settings the service reads (``service.settings.Settings.from_env``), so the check follows
``SIGNING_KEYS_HTTP_PORT`` and ``SIGNING_KEYS_CONFIG_FILE``; settings that do not load mean
the service cannot be running, which is unhealthy too. ``/healthz`` is liveness only: it does
not depend on any database region, so a region outage does not get the container restarted.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from service.settings import Settings, SettingsError

TIMEOUT_SECONDS = 2.0
WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - compared, not bound


def healthz_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.http_host in WILDCARD_HOSTS else settings.http_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert_file else "http"
    return f"{scheme}://{host}:{settings.http_port}/healthz"


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"unhealthy: invalid configuration: {exc}", file=sys.stderr)
        return 1
    url = healthz_url(settings)
    # Our own certificate is issued for the service's name, not for 127.0.0.1: the check
    # proves the process answers, the certificate is checked by real clients.
    context = ssl._create_unverified_context() if url.startswith("https") else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
            healthy = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

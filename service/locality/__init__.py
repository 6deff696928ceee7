"""The locality router: regions, pools, probes, choice, retries and deadlines.

It knows nothing of keys; the store hands it operations (async functions of one asyncpg
connection) through the :class:`~service.store.database.Database` protocol.
"""

from __future__ import annotations

from service.locality.router import LocalityRouter
from service.locality.status import RegionStatus, RouterStatus

__all__ = ["LocalityRouter", "RegionStatus", "RouterStatus"]

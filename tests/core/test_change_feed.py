"""The change feed misses nothing behind a lagging standby."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import jwt

from harness import LocalTopology
from service.core.models import Scope
from service.server import Server
from service.settings import Settings
from service.store.migrations import migrate
from tests.support.service import service_env

KEYS = "/system/v1/signing-keys"

POLLS = "signing_keys_change_polls_total"


async def test_a_change_made_while_the_local_standby_lagged_is_applied_once_it_catches_up(
    fresh_topology: LocalTopology,
) -> None:
    """Replay pauses on the reader's region for longer than the overlap window while a key
    is created and revoked. A watermark taken from the standby's clock would pass the
    change by; the feed's data watermark must still see it once replay resumes."""
    topology = fresh_topology
    fast = {
        "request_deadline": "0.5",
        "change_poll_interval": "0.05",
        "change_overlap": "1.0",
        # Keep reading the lagging standby: that is the point.
        "max_replica_lag": "1000",
        "change_max_data_age": "1000",
        # The credential table counts data as old as that bound allows (1000 s): past
        # MAX_STALENESS (300 s by default) it would fail every request closed.
        "max_staleness": "3600",
        "grpc_enabled": "false",
    }
    writer_env = service_env(topology, "aws-us-east-1", **fast)
    reader_env = service_env(topology, "gcp-us-central1", **fast)
    async with Server(Settings.from_env(writer_env)) as writer:
        assert await writer.database.wait_ready(writable=True, timeout=10)
        await migrate(writer.database)
        async with Server(Settings.from_env(reader_env)) as reader:
            token_record, secret = await writer.authenticator.issue(list(Scope), ["env-lag"])
            headers = {"Authorization": aiohttp.encode_basic_auth(token_record.id, secret)}
            await asyncio.to_thread(topology.wait_replayed)  # the token reaches every region
            await asyncio.to_thread(
                topology.query, "gcp-us-central1", "SELECT pg_wal_replay_pause()"
            )
            try:
                async with aiohttp.ClientSession(headers=headers) as http:
                    base = f"http://127.0.0.1:{writer.http_port}{KEYS}"
                    async with http.post(base, json={"algorithm": "EdDSA"}) as response:
                        created = (await response.json())["data"]
                    async with http.delete(f"{base}/{created['id']}") as response:
                        assert response.status == 204
                    # Let the reader poll its paused standby for well over the overlap.
                    polls = reader.metrics.value(POLLS, outcome="ok")
                    started = time.monotonic()
                    while (
                        time.monotonic() - started < 2.5
                        or reader.metrics.value(POLLS, outcome="ok") < polls + 10
                    ):
                        await asyncio.sleep(0.05)
            finally:
                await asyncio.to_thread(
                    topology.query, "gcp-us-central1", "SELECT pg_wal_replay_resume()"
                )
            # The reader does not know the key until its standby replays; then it must.
            private = base64.b64decode(created["private_key"])
            token = jwt.encode(
                {"exp": int(time.time()) + 60}, private, "EdDSA", headers={"kid": created["id"]}
            )
            verdict = await _verdict_within(reader, headers, token, "revoked_key", 3.0)
            assert verdict["key_id"] == created["id"]


async def _verdict_within(
    server: Server, headers: dict[str, str], token: str, reason: str, limit: float
) -> dict[str, object]:
    url = f"http://127.0.0.1:{server.http_port}/v1/tokens/verify"
    started = time.monotonic()
    async with aiohttp.ClientSession(headers=headers) as http:
        while True:
            async with http.post(url, json={"token": token}) as response:
                verdict: dict[str, object] = (await response.json())["data"]
            if verdict["reason"] == reason:
                return verdict
            assert time.monotonic() - started < limit, f"still {verdict} after {limit}s"
            await asyncio.sleep(0.02)

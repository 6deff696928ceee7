"""Who may call what: every HTTP route and every gRPC method, under every kind of caller.

The routes and methods come from the live objects — the aiohttp application's router, and
the services the gRPC server lists through reflection with their methods from the protobuf
descriptors — and each must have a row in the expectation tables below (``HTTP_RULES``,
``GRPC_RULES``): a route or a method added without deciding who may call it fails
:func:`test_every_http_route_has_a_rule` or :func:`test_every_grpc_method_has_a_rule`.

Each row is run under every :data:`CASES` entry, and the answer compared with what the row
expects; the failures of a whole transport are reported together, as a table. Reads across
environments must not tell whether a key exists: a key of another environment is answered
exactly like a key that does not exist (the tests at the end).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import aiohttp
import betterproto
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from h2.exceptions import StreamClosedError

from service.core.models import Scope
from service.grpc.generated.signingkeys import v1 as pb
from service.server import Server
from tests.support.service import Credentials, TokenFactory

Case = Literal[
    "no_credentials",
    "bad_secret",
    "without_read",
    "without_write",
    "without_verify",
    "other_environment",
    "several_environments",
    "correct",
]
CASES: Final[tuple[Case, ...]] = (
    "no_credentials",  # no Authorization at all
    "bad_secret",  # a real token id with a wrong secret
    "without_read",  # a token for the environment with every scope but one …
    "without_write",
    "without_verify",
    "other_environment",  # a token for environment B naming environment A
    "several_environments",  # a token for A and C naming none
    "correct",  # a token for A with every scope, naming none (its only environment)
)
MISSING_SCOPE: Final[dict[Case, Scope]] = {
    "without_read": Scope.READ,
    "without_write": Scope.WRITE,
    "without_verify": Scope.VERIFY,
}


@dataclass(frozen=True)
class Rule:
    """What a route or method demands. ``needs``: the scopes of which the caller must hold
    one (empty: anyone may call); ``ok``: the answer when it may; ``checks_credentials``:
    a public route that still refuses wrong credentials; ``environment_optional``: the call
    means something without a named environment even for a token of several."""

    ok: int | Status
    needs: frozenset[Scope] = frozenset()
    checks_credentials: bool = False
    environment_optional: bool = False

    @property
    def public(self) -> bool:
        return not self.needs

    def expect(
        self,
        case: Case,
        *,
        unauthenticated: int | Status,
        denied: int | Status,
        unnamed: int | Status,
    ) -> int | Status:
        """``unnamed``: the answer to a token of several environments that names none (a
        missing argument, not a refusal)."""
        if case == "correct":
            return self.ok
        if self.public:
            return unauthenticated if case == "bad_secret" and self.checks_credentials else self.ok
        if case in ("no_credentials", "bad_secret"):
            return unauthenticated
        if case in MISSING_SCOPE:
            return denied if self.needs <= {MISSING_SCOPE[case]} else self.ok
        if case == "several_environments":
            return self.ok if self.environment_optional else unnamed
        return denied


def needs(*scopes: Scope) -> frozenset[Scope]:
    return frozenset(scopes)


KEYS: Final = "/system/v1/signing-keys"
PUBLIC: Final = Rule(ok=200)

# The declarative table: (method, route as the router names it) -> who may call it. HEAD
# routes (aiohttp adds one beside every GET) answer as their GET does.
HTTP_RULES: Final[dict[tuple[str, str], Rule]] = {
    ("POST", KEYS): Rule(ok=201, needs=needs(Scope.WRITE)),
    ("GET", KEYS): Rule(ok=200, needs=needs(Scope.READ)),
    ("POST", KEYS + "/import"): Rule(ok=201, needs=needs(Scope.WRITE)),
    ("GET", KEYS + "/{id}"): Rule(ok=200, needs=needs(Scope.READ)),
    ("GET", KEYS + ":batchGet"): Rule(ok=200, needs=needs(Scope.READ)),
    ("GET", "/system/v1/audit-events"): Rule(ok=200, needs=needs(Scope.READ)),
    ("GET", KEYS + "/{id}/public-key"): Rule(ok=200, needs=needs(Scope.READ)),
    ("DELETE", KEYS + "/{id}"): Rule(ok=204, needs=needs(Scope.WRITE)),
    ("PATCH", KEYS + "/{id}"): Rule(ok=200, needs=needs(Scope.WRITE)),
    ("POST", KEYS + "/{id}/rotate"): Rule(ok=201, needs=needs(Scope.WRITE)),
    ("GET", KEYS + ":current"): Rule(ok=200, needs=needs(Scope.READ)),
    ("POST", "/v1/tokens/verify"): Rule(
        ok=200, needs=needs(Scope.VERIFY), environment_optional=True
    ),
    ("GET", "/v1/environments/{environment_id}/jwks.json"): Rule(
        ok=200, needs=needs(Scope.READ, Scope.VERIFY), environment_optional=True
    ),
    ("PUT", "/v1/environments/{environment_id}/settings"): Rule(
        ok=200, needs=needs(Scope.WRITE), environment_optional=True
    ),
    # Anonymous on purpose (verifiers that cannot send credentials); the world opts A in.
    ("GET", "/v1/public/environments/{environment_id}/jwks.json"): PUBLIC,
    ("GET", "/v1/regions"): Rule(ok=200, checks_credentials=True),
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
}

SIGNING_KEYS: Final = "/signingkeys.v1.SigningKeys/"
GRPC_OK: Final = Rule(ok=Status.OK)
GRPC_RULES: Final[dict[str, Rule]] = {
    SIGNING_KEYS + "CreateSigningKey": Rule(ok=Status.OK, needs=needs(Scope.WRITE)),
    SIGNING_KEYS + "ImportSigningKey": Rule(ok=Status.OK, needs=needs(Scope.WRITE)),
    SIGNING_KEYS + "GetSigningKey": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "ListSigningKeys": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "RevokeSigningKey": Rule(ok=Status.OK, needs=needs(Scope.WRITE)),
    SIGNING_KEYS + "VerifyToken": Rule(
        ok=Status.OK, needs=needs(Scope.VERIFY), environment_optional=True
    ),
    SIGNING_KEYS + "WatchSigningKeys": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "BatchGetSigningKeys": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "ListAuditEvents": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "RotateSigningKey": Rule(ok=Status.OK, needs=needs(Scope.WRITE)),
    SIGNING_KEYS + "UpdateSigningKey": Rule(ok=Status.OK, needs=needs(Scope.WRITE)),
    SIGNING_KEYS + "GetCurrentSigningKey": Rule(ok=Status.OK, needs=needs(Scope.READ)),
    SIGNING_KEYS + "GetJwks": Rule(ok=Status.OK, needs=needs(Scope.READ, Scope.VERIFY)),
    # Orchestrators and stock tools call these without credentials.
    "/grpc.health.v1.Health/Check": GRPC_OK,
    "/grpc.health.v1.Health/Watch": GRPC_OK,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": GRPC_OK,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": GRPC_OK,
}


# --- The callers and the keys they ask about ------------------------------------------------


def public_pem() -> str:
    """A fresh Ed25519 public key: every import is of a key never seen before."""
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass
class World:
    """Environment A (the one asked about) with two keys, B and C beside it, and a token for
    each case. ``read_key`` is never revoked; ``revoke_key`` is the one DELETE may revoke."""

    env_a: str
    env_b: str
    callers: dict[Case, Credentials | None]
    read_key: str
    revoke_key: str
    signed: str = field(repr=False)  # a token signed with read_key's private key
    private_pem: bytes = field(repr=False)

    def names(self, case: Case) -> str | None:
        """The environment a case's request names (None: none, as a one-environment token
        may)."""
        return self.env_a if case == "other_environment" else None

    def sign(self, kid: str) -> str:
        claims = {"sub": "p1", "aud": "v", "exp": int(time.time()) + 600}
        return jwt.encode(claims, self.private_pem, algorithm="EdDSA", headers={"kid": kid})


async def make_world(server: Server, issue_token: TokenFactory, environment: str) -> World:
    env_a, env_b, env_c = environment, environment + "-b", environment + "-c"
    everything = await issue_token([env_a])
    callers: dict[Case, Credentials | None] = {
        "no_credentials": None,
        "bad_secret": Credentials(everything.login, "x" * len(everything.password)),
        "other_environment": await issue_token([env_b]),
        "several_environments": await issue_token([env_a, env_c]),
        "correct": everything,
    }
    for case, scope in MISSING_SCOPE.items():
        callers[case] = await issue_token([env_a], [s for s in Scope if s != scope])
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession(base_url=base, headers=everything.headers) as http:
        created = []
        for _ in range(2):
            async with http.post(KEYS, json={"algorithm": "EdDSA"}) as response:
                assert response.status == 201, await response.text()
                created.append((await response.json())["data"])
        # The anonymous JWK Set route answers 200 only for an environment that opted in.
        async with http.put(
            f"/v1/environments/{env_a}/settings", json={"public_jwks": True}
        ) as response:
            assert response.status == 200, await response.text()
    private_pem = base64.b64decode(created[0]["private_key"])
    world = World(
        env_a=env_a,
        env_b=env_b,
        callers=callers,
        read_key=created[0]["id"],
        revoke_key=created[1]["id"],
        signed="",
        private_pem=private_pem,
    )
    world.signed = world.sign(world.read_key)
    return world


@pytest.fixture
async def world(server: Server, issue_token: TokenFactory, environment: str) -> World:
    return await make_world(server, issue_token, environment)


async def fresh_key(server: Server, world: World) -> str:
    """A new key of environment A: a key rotates once, so each rotation gets its own."""
    correct = world.callers["correct"]
    assert correct is not None
    base = f"http://127.0.0.1:{server.http_port}"
    async with (
        aiohttp.ClientSession(base_url=base, headers=correct.headers) as http,
        http.post(KEYS, json={"algorithm": "EdDSA"}) as response,
    ):
        assert response.status == 201, await response.text()
        return str((await response.json())["data"]["id"])


def rotates(path: str) -> bool:
    return path.endswith("/rotate") or path.endswith("/RotateSigningKey")


# --- HTTP -----------------------------------------------------------------------------------


def live_http_routes(server: Server) -> set[tuple[str, str]]:
    return {
        (route.method, route.resource.canonical)
        for route in server.app.router.routes()
        if route.resource is not None
    }


def http_rule(method: str, path: str) -> Rule | None:
    return HTTP_RULES.get(("GET" if method == "HEAD" else method, path))


def test_every_http_route_has_a_rule(server: Server) -> None:
    live = live_http_routes(server)
    missing = sorted(route for route in live if http_rule(*route) is None)
    assert not missing, f"routes with no row in HTTP_RULES (decide who may call them): {missing}"
    stale = sorted(set(HTTP_RULES) - live)
    assert not stale, f"rows for routes the server no longer has: {stale}"


def http_request(
    world: World, method: str, path: str, case: Case, *, key: str | None = None
) -> tuple[str, dict[str, str], Any]:
    """The path, headers and JSON body (None: no body) of a well-formed call of the route."""
    caller = world.callers[case]
    headers = dict(caller.headers) if caller is not None else {}
    named = world.names(case)
    if named is not None:
        headers["X-Environment-Id"] = named
    key_id = key or (world.revoke_key if method == "DELETE" else world.read_key)
    url = path.replace("{id}", key_id).replace("{environment_id}", world.env_a)
    body: Any = None
    if path == KEYS + ":batchGet":
        url += "?ids=" + key_id
    if (method, path) == ("POST", KEYS):
        body = {"algorithm": "EdDSA"}
    elif (method, path) == ("POST", KEYS + "/import"):
        body = {"public_key": public_pem()}
    elif (method, path) == ("PUT", "/v1/environments/{environment_id}/settings"):
        body = {"public_jwks": True}
    elif (method, path) == ("POST", "/v1/tokens/verify"):
        body = {"token": world.signed} | ({"environment_id": named} if named else {})
    elif (method, path) == ("PATCH", KEYS + "/{id}"):
        body = {"name": "renamed"}
    return url, headers, body


async def test_http_authorization_matrix(
    server: Server, http: aiohttp.ClientSession, world: World
) -> None:
    routes = sorted(live_http_routes(server))
    mismatches = []
    for method, path in routes:
        rule = http_rule(method, path)
        assert rule is not None, (method, path)
        for case in CASES:
            key = await fresh_key(server, world) if rotates(path) else None
            url, headers, body = http_request(world, method, path, case, key=key)
            async with http.request(method, url, headers=headers, json=body) as response:
                got = response.status
                text = await response.text()
            wanted = rule.expect(case, unauthenticated=401, denied=403, unnamed=400)
            if got != wanted:
                mismatches.append(f"{method} {path} [{case}]: {got}, expected {wanted}: {text}")
    assert len(routes) * len(CASES) >= 25 * 8, "the matrix shrank: were routes lost?"
    assert not mismatches, "\n".join(mismatches)


async def test_a_key_of_another_environment_answers_exactly_like_a_missing_key_over_http(
    http: aiohttp.ClientSession, world: World
) -> None:
    """Environment B's token asks for environment A's key by id, naming no environment (so
    its own): the answer is the one for an id that exists nowhere, status and body, on
    every route that takes a key id. Naming A is 403 whether or not the key exists."""
    missing = secrets.token_urlsafe(24)
    caller = world.callers["other_environment"]
    assert caller is not None
    # One request id for all: error bodies carry it, and only the key may tell them apart.
    probe = {**caller.headers, "X-Request-Id": "probe"}
    for method, path in HTTP_RULES:
        if "{id}" not in path:
            continue
        answers = {}
        for key in (world.read_key, world.revoke_key, missing):
            url = path.replace("{id}", key)
            async with http.request(method, url, headers=probe) as response:
                answers[key] = (response.status, (await response.text()).replace(key, "<id>"))
            named = {**probe, "X-Environment-Id": world.env_a}
            async with http.request(method, url, headers=named) as response:
                answers[key + "/named"] = (
                    response.status,
                    (await response.text()).replace(key, "<id>"),
                )
        assert answers[world.read_key] == answers[world.revoke_key] == answers[missing], path
        assert answers[world.read_key][0] == 404
        named_answers = {answers[k + "/named"] for k in (world.read_key, missing)}
        assert len(named_answers) == 1 and next(iter(named_answers))[0] == 403, named_answers
    # Nor do the lists: environment B's list and JWK Set hold none of A's keys.
    async with http.get(KEYS + "?status=all", headers=caller.headers) as response:
        assert (response.status, (await response.json())["data"]) == (200, [])
    async with http.get(
        f"/v1/environments/{world.env_b}/jwks.json", headers=caller.headers
    ) as response:
        assert (response.status, (await response.json())["keys"]) == (200, [])
    # The keys are untouched: the revoke above reached nothing.
    correct = world.callers["correct"]
    assert correct is not None
    async with http.get(f"{KEYS}/{world.revoke_key}", headers=correct.headers) as response:
        assert response.status == 200


async def test_verifying_a_token_of_another_environment_reveals_nothing_over_http(
    http: aiohttp.ClientSession, world: World
) -> None:
    """A token signed with environment A's key, verified with environment B's credentials,
    is ``unknown_key`` exactly like a token naming a key that exists nowhere."""
    caller = world.callers["other_environment"]
    assert caller is not None
    missing = secrets.token_urlsafe(24)
    answers = []
    for kid, token in ((world.read_key, world.signed), (missing, world.sign(missing))):
        async with http.post(
            "/v1/tokens/verify", json={"token": token}, headers=caller.headers
        ) as response:
            answers.append((response.status, (await response.text()).replace(kid, "<kid>")))
    assert answers[0] == answers[1]
    status, text = answers[0]
    assert status == 200 and json.loads(text)["data"]["reason"] == "unknown_key"


# --- gRPC -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    cardinality: Cardinality
    request_type: Any
    reply_type: Any


async def live_grpc_methods(server: Server, channel: Channel) -> dict[str, Method]:
    """Every method of every service the server lists through reflection (and reflection
    itself), typed as the server's own handlers declare them — but SigningKeys' messages as
    our Python client sends them, betterproto's (the server decodes its hot RPCs' with upb)."""
    assert server.grpc is not None
    stream_request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with channel.request(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Cardinality.STREAM_STREAM,
        reflection_pb2.ServerReflectionRequest,
        reflection_pb2.ServerReflectionResponse,
    ) as stream:
        await stream.send_message(stream_request, end=True)
        reply = await stream.recv_message()
        assert reply is not None
        await stream.recv_trailing_metadata()
    services = {service.name for service in reply.list_services_response.service}
    services |= {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    pool = descriptor_pool.Default()
    described = {
        f"/{name}/{method.name}"
        for name in services
        for method in pool.FindServiceByName(name).methods
    }
    handlers: dict[str, Any] = {}
    servables: list[Any] = [server.grpc.servicer, server.grpc.health]
    for servable in [*servables, *ServerReflection.extend([])]:
        handlers.update(servable.__mapping__())
    assert described == set(handlers), "the descriptors and the served handlers disagree"
    return {
        path: Method(
            handler.cardinality, client_type(handler.request_type), client_type(handler.reply_type)
        )
        for path, handler in handlers.items()
    }


def client_type(message_type: Any) -> Any:
    """The betterproto class of a SigningKeys message the server declares with upb."""
    descriptor = getattr(message_type, "DESCRIPTOR", None)
    if descriptor is not None and descriptor.full_name.startswith("signingkeys.v1."):
        return getattr(pb, descriptor.name)
    return message_type


async def test_every_grpc_method_has_a_rule(server: Server, channel: Channel) -> None:
    live = await live_grpc_methods(server, channel)
    missing = sorted(set(live) - set(GRPC_RULES))
    assert not missing, f"methods with no row in GRPC_RULES (decide who may call them): {missing}"
    stale = sorted(set(GRPC_RULES) - set(live))
    assert not stale, f"rows for methods the server no longer has: {stale}"


def grpc_request(world: World, path: str, case: Case, *, key: str | None = None) -> Any:
    named = world.names(case) or ""
    name = path.rsplit("/", 1)[1]
    requests: dict[str, Callable[[], Any]] = {
        "CreateSigningKey": lambda: pb.CreateSigningKeyRequest(
            environment_id=named, algorithm="EdDSA"
        ),
        "ImportSigningKey": lambda: pb.ImportSigningKeyRequest(
            environment_id=named, pem=public_pem()
        ),
        "GetSigningKey": lambda: pb.GetSigningKeyRequest(
            environment_id=named, id=key or world.read_key
        ),
        "ListSigningKeys": lambda: pb.ListSigningKeysRequest(environment_id=named),
        "RevokeSigningKey": lambda: pb.RevokeSigningKeyRequest(
            environment_id=named, id=key or world.revoke_key
        ),
        "VerifyToken": lambda: pb.VerifyTokenRequest(token=world.signed, environment_id=named),
        "WatchSigningKeys": lambda: pb.WatchSigningKeysRequest(environment_id=named),
        "ListAuditEvents": lambda: pb.ListAuditEventsRequest(environment_id=named),
        "BatchGetSigningKeys": lambda: pb.BatchGetSigningKeysRequest(
            environment_id=named, ids=[key or world.read_key]
        ),
        "RotateSigningKey": lambda: pb.RotateSigningKeyRequest(
            environment_id=named, id=key or world.read_key
        ),
        "UpdateSigningKey": lambda: pb.UpdateSigningKeyRequest(
            environment_id=named, id=key or world.read_key, name="renamed"
        ),
        "GetCurrentSigningKey": lambda: pb.GetCurrentSigningKeyRequest(environment_id=named),
        "GetJwks": lambda: pb.GetJwksRequest(environment_id=named),
        "Check": HealthCheckRequest,
        "Watch": HealthCheckRequest,
    }
    if name == "ServerReflectionInfo":
        module = reflection_v1alpha_pb2 if ".v1alpha." in path else reflection_pb2
        return module.ServerReflectionRequest(list_services="")
    return requests[name]()


@dataclass(frozen=True)
class Answer:
    status: Status
    message: str | None
    reply: Any


async def call(
    channel: Channel, path: str, method: Method, request: Any, caller: Credentials | None
) -> Answer:
    """One call, the way a client makes it; a stream is ended after its first message."""
    metadata = {"authorization": caller.headers["Authorization"]} if caller else None
    try:
        async with channel.request(
            path,
            method.cardinality,
            method.request_type,
            method.reply_type,
            metadata=metadata,
            timeout=10,
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            if method.cardinality is Cardinality.UNARY_UNARY:
                await stream.recv_trailing_metadata()
            else:
                # A watch goes on for ever; reflection has ended already (as we did).
                with contextlib.suppress(StreamClosedError):
                    await stream.cancel()
            return Answer(Status.OK, None, reply)
    except GRPCError as exc:
        return Answer(exc.status, exc.message, None)


async def test_grpc_authorization_matrix(server: Server, channel: Channel, world: World) -> None:
    methods = await live_grpc_methods(server, channel)
    mismatches = []
    for path, method in sorted(methods.items()):
        rule = GRPC_RULES[path]
        for case in CASES:
            key = await fresh_key(server, world) if rotates(path) else None
            answer = await call(
                channel,
                path,
                method,
                grpc_request(world, path, case, key=key),
                world.callers[case],
            )
            wanted = rule.expect(
                case,
                unauthenticated=Status.UNAUTHENTICATED,
                denied=Status.PERMISSION_DENIED,
                unnamed=Status.INVALID_ARGUMENT,
            )
            if answer.status != wanted:
                mismatches.append(
                    f"{path} [{case}]: {answer.status.name}, expected {wanted!r}: {answer.message}"
                )
    assert len(methods) * len(CASES) >= 15 * 8, "the matrix shrank: were methods lost?"
    assert not mismatches, "\n".join(mismatches)


async def test_a_key_of_another_environment_answers_exactly_like_a_missing_key_over_grpc(
    server: Server, channel: Channel, world: World
) -> None:
    methods = await live_grpc_methods(server, channel)
    caller = world.callers["other_environment"]
    missing = secrets.token_urlsafe(24)
    for name in ("GetSigningKey", "RevokeSigningKey", "RotateSigningKey", "UpdateSigningKey"):
        path = SIGNING_KEYS + name
        answers = []
        for key in (world.read_key, world.revoke_key, missing):
            request = grpc_request(world, path, "correct", key=key)
            answer = await call(channel, path, methods[path], request, caller)
            answers.append((answer.status, (answer.message or "").replace(key, "<id>")))
        assert answers[0] == answers[1] == answers[2], (name, answers)
        assert answers[0][0] is Status.NOT_FOUND
    path = SIGNING_KEYS + "VerifyToken"
    replies = []
    for kid, token in ((world.read_key, world.signed), (missing, world.sign(missing))):
        answer = await call(
            channel, path, methods[path], pb.VerifyTokenRequest(token=token), caller
        )
        assert answer.status is Status.OK
        reply = answer.reply
        assert isinstance(reply, betterproto.Message)
        replies.append(json.dumps(reply.to_dict()).replace(kid, "<kid>"))
    assert replies[0] == replies[1]
    assert json.loads(replies[0])["reasonText"] == "unknown_key"

"""The OpenAPI document as generated clients read it: valid OpenAPI 3.1, every operation
named and tagged, every response object open to new members, no closed enumeration in a
response (a new ``status`` or ``algorithm`` must not break a deployed client), and every
example valid against its own schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from service.http.openapi import openapi_document

_METHODS = ("get", "post", "put", "patch", "delete")


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in openapi_document()["paths"].items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def _schemas_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every (sub)schema under ``node``."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_in(value)


def _response_schema_names() -> set[str]:
    """The component schemas reachable from a response (requests are closed on purpose)."""
    schemas = openapi_document()["components"]["schemas"]
    seen: set[str] = set()
    pending = [
        node
        for _, _, operation in _operations()
        for response in operation["responses"].values()
        for node in [response]
    ]
    pending += list(openapi_document()["components"]["responses"].values())
    while pending:
        for node in _schemas_in(pending.pop()):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in seen:
                    seen.add(name)
                    pending.append(schemas[name])
    return seen


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(openapi_document())


def test_every_operation_has_a_unique_operation_id_and_a_declared_tag() -> None:
    document = openapi_document()
    tags = {tag["name"] for tag in document["tags"]}
    ids = [operation["operationId"] for _, _, operation in _operations()]
    assert len(ids) == len(set(ids))
    assert all(
        operation["tags"] and set(operation["tags"]) <= tags for *_, operation in _operations()
    )


def test_every_response_schema_is_named_and_open() -> None:
    names = _response_schema_names()
    assert {"SigningKey", "CreatedSigningKey", "Verdict", "JwkSet", "ErrorResponse"} <= names
    schemas = openapi_document()["components"]["schemas"]
    for name in names:
        for node in _schemas_in(schemas[name]):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is True, name
            assert "enum" not in node, f"{name} has a closed enum"


def test_open_enumerations_list_their_known_values() -> None:
    schemas = openapi_document()["components"]["schemas"]
    status = schemas["SigningKey"]["properties"]["status"]
    assert status["x-extensible-enum"] == ["active", "revoked"]
    assert "active" in status["description"]
    assert "RS256" in schemas["SigningKey"]["properties"]["algorithm"]["x-extensible-enum"]
    assert "unknown_key" in schemas["Verdict"]["properties"]["reason"]["x-extensible-enum"]


def test_always_present_members_are_required() -> None:
    schemas = openapi_document()["components"]["schemas"]
    key = schemas["SigningKey"]
    assert set(key["required"]) == set(key["properties"])
    assert set(schemas["Verdict"]["required"]) == set(schemas["Verdict"]["properties"])
    assert "private_key" in schemas["CreatedSigningKey"]["required"]


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "components": openapi_document()["components"]}


@pytest.mark.parametrize("name", sorted(openapi_document()["components"]["schemas"]))
def test_every_example_is_valid_against_its_schema(name: str) -> None:
    schema = openapi_document()["components"]["schemas"][name]
    for example in schema.get("examples", []):
        jsonschema.Draft202012Validator(_resolved(schema)).validate(example)


def test_every_error_status_carries_the_error_body_and_every_response_the_request_id() -> None:
    for path, method, operation in _operations():
        for status, response in operation["responses"].items():
            if "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[1]
                response = openapi_document()["components"]["responses"][name]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
            assert "X-Request-Id" in response["headers"], (path, method, status)
        assert "500" in operation["responses"], (path, method)

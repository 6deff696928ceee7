"""Settings are built from SIGNING_KEYS_* variables; a bad one names itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.settings import RouterSettings, Settings, SettingsError, region_dsn_variable

BASE = {
    "SIGNING_KEYS_REGIONS": "aws-us-east-1:aws,gcp-us-central1:gcp:5",
    "SIGNING_KEYS_LOCAL_REGION": "aws-us-east-1",
    "SIGNING_KEYS_DSN_AWS_US_EAST_1": "postgresql://u:p@a/db",
    "SIGNING_KEYS_DSN_GCP_US_CENTRAL1": "postgresql://u:p@b/db",
}


def test_regions_ports_and_timeouts_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {**BASE, "SIGNING_KEYS_HTTP_PORT": "9000", "SIGNING_KEYS_PROBE_INTERVAL": "0.05"}
    )
    assert [(r.name, r.cloud, r.priority) for r in settings.regions] == [
        ("aws-us-east-1", "aws", 0),
        ("gcp-us-central1", "gcp", 5),
    ]
    assert settings.local.dsn == "postgresql://u:p@a/db"
    assert settings.http_port == 9000 and settings.grpc_port == 50051
    assert settings.router.probe_interval == 0.05


def test_a_dsn_never_shows_in_a_repr() -> None:
    settings = Settings.from_env(BASE)
    assert "u:p@" not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SIGNING_KEYS_REGIONS": ""}, "SIGNING_KEYS_REGIONS"),
        ({"SIGNING_KEYS_REGIONS": "aws-us-east-1"}, "SIGNING_KEYS_REGIONS"),
        ({"SIGNING_KEYS_REGIONS": "Bad_Name:aws"}, "SIGNING_KEYS_REGIONS"),
        ({"SIGNING_KEYS_REGIONS": "aws-us-east-1:aws,aws-us-east-1:aws"}, "twice"),
        ({"SIGNING_KEYS_LOCAL_REGION": "mars-1"}, "SIGNING_KEYS_LOCAL_REGION"),
        ({"SIGNING_KEYS_DSN_GCP_US_CENTRAL1": ""}, "SIGNING_KEYS_DSN_GCP_US_CENTRAL1"),
        ({"SIGNING_KEYS_DSN_GCP_US_CENTRAL1": "mysql://x"}, "SIGNING_KEYS_DSN_GCP_US_CENTRAL1"),
        ({"SIGNING_KEYS_HTTP_PORT": "eighty"}, "SIGNING_KEYS_HTTP_PORT"),
        ({"SIGNING_KEYS_HTTP_PORT": "70000"}, "SIGNING_KEYS_HTTP_PORT"),
        ({"SIGNING_KEYS_PROBE_TIMEOUT": "-1"}, "SIGNING_KEYS_PROBE_TIMEOUT"),
        ({"SIGNING_KEYS_FALL": "0"}, "SIGNING_KEYS_FALL"),
        ({"SIGNING_KEYS_ACCESS_LOG": "loud"}, "SIGNING_KEYS_ACCESS_LOG"),
        ({"SIGNING_KEYS_GRPC_ENABLED": "maybe"}, "SIGNING_KEYS_GRPC_ENABLED"),
        ({"SIGNING_KEYS_TLS_CERT_FILE": "/c.pem"}, "SIGNING_KEYS_TLS_KEY_FILE"),
        ({"SIGNING_KEYS_POOL_MIN_SIZE": "20"}, "SIGNING_KEYS_POOL_MIN_SIZE"),
        ({"SIGNING_KEYS_AUTH_FAILURES_PER_CLIENT": "0"}, "SIGNING_KEYS_AUTH_FAILURES_PER_CLIENT"),
        ({"SIGNING_KEYS_AUTH_FAILURES_PER_TOKEN": "x"}, "SIGNING_KEYS_AUTH_FAILURES_PER_TOKEN"),
        ({"SIGNING_KEYS_MAX_WATCH_STREAMS_PER_CALLER": "0"}, "MAX_WATCH_STREAMS_PER_CALLER"),
        ({"SIGNING_KEYS_MAX_SNAPSHOT_READS": "10"}, "SIGNING_KEYS_MAX_SNAPSHOT_READS"),
        ({"SIGNING_KEYS_WATCH_PROGRESS_INTERVAL": "0"}, "SIGNING_KEYS_WATCH_PROGRESS_INTERVAL"),
        ({"SIGNING_KEYS_WATCH_MAX_AGE": "never"}, "SIGNING_KEYS_WATCH_MAX_AGE"),
        ({"SIGNING_KEYS_HTTP_HEADER_TIMEOUT": "0"}, "SIGNING_KEYS_HTTP_HEADER_TIMEOUT"),
        ({"SIGNING_KEYS_HTTP_BODY_TIMEOUT": "soon"}, "SIGNING_KEYS_HTTP_BODY_TIMEOUT"),
        ({"SIGNING_KEYS_HTTP_IDLE_TIMEOUT": "-1"}, "SIGNING_KEYS_HTTP_IDLE_TIMEOUT"),
        ({"SIGNING_KEYS_HTTP_MAX_CONNECTIONS_PER_CLIENT": "0"}, "MAX_CONNECTIONS_PER_CLIENT"),
        (
            {"SIGNING_KEYS_POOL_MAX_SIZE": "3", "SIGNING_KEYS_POOL_MIN_SIZE": "1"},
            "SIGNING_KEYS_MAX_SNAPSHOT_READS",
        ),
    ],
)
def test_a_bad_setting_stops_start_up_with_a_message_naming_it(
    overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**BASE, **overrides})


def test_a_config_file_fills_in_what_the_environment_does_not_set(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"http_port": 7001, "grpc_port": 7002}))
    settings = Settings.from_env(
        {**BASE, "SIGNING_KEYS_CONFIG_FILE": str(path), "SIGNING_KEYS_GRPC_PORT": "7003"}
    )
    assert (settings.http_port, settings.grpc_port) == (7001, 7003)


def test_an_unreadable_config_file_is_named() -> None:
    with pytest.raises(SettingsError, match="SIGNING_KEYS_CONFIG_FILE"):
        Settings.from_env({**BASE, "SIGNING_KEYS_CONFIG_FILE": "/nonexistent/config.json"})


def test_region_dsn_variable_names() -> None:
    assert region_dsn_variable("gcp-us-central1") == "SIGNING_KEYS_DSN_GCP_US_CENTRAL1"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SIGNING_KEYS_CLOCK_SKEW": "inf"}, "SIGNING_KEYS_CLOCK_SKEW"),
        ({"SIGNING_KEYS_MAX_STALENESS": "nan"}, "SIGNING_KEYS_MAX_STALENESS"),
        ({"SIGNING_KEYS_CHANGE_OVERLAP": "2"}, "SIGNING_KEYS_CHANGE_OVERLAP"),
        (
            {"SIGNING_KEYS_REQUEST_DEADLINE": "10", "SIGNING_KEYS_CHANGE_OVERLAP": "8"},
            "SIGNING_KEYS_CHANGE_OVERLAP",
        ),
        (
            {"SIGNING_KEYS_WRITE_DEADLINE": "10", "SIGNING_KEYS_CHANGE_OVERLAP": "8"},
            "SIGNING_KEYS_CHANGE_OVERLAP",
        ),
    ],
)
def test_numbers_must_be_finite_and_the_change_overlap_must_cover_a_write(
    overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env({**BASE, **overrides})


def test_unset_variables_take_the_dataclasses_own_defaults() -> None:
    """Defaults are declared once: built from an environment that sets nothing optional,
    the settings equal the ones built in code from the same regions."""
    from_env = Settings.from_env(BASE)
    in_code = Settings(regions=from_env.regions, local_region=from_env.local_region)
    assert from_env == in_code
    assert from_env.router == RouterSettings()


def test_a_pool_smaller_than_its_minimum_is_refused_however_it_is_built() -> None:
    with pytest.raises(SettingsError, match="POOL_MIN_SIZE"):
        RouterSettings(pool_min_size=5, pool_max_size=2)
    with pytest.raises(SettingsError, match="POOL_MIN_SIZE"):
        Settings.from_env(
            {**BASE, "SIGNING_KEYS_POOL_MIN_SIZE": "5", "SIGNING_KEYS_POOL_MAX_SIZE": "2"}
        )


def test_the_migrations_folder_is_a_setting_like_the_others() -> None:
    assert Settings.from_env(BASE).sql_dir is None
    assert Settings.from_env({**BASE, "SIGNING_KEYS_SQL_DIR": "/app/sql"}).sql_dir == "/app/sql"

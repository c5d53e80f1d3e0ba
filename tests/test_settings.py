"""Settings: layering order, sources, and one clear message for every bad value."""

import json
from pathlib import Path

import pytest

from workload import stack_outputs
from workload.errors import LabError
from workload.settings import Settings, load_settings, redact_url


def write_outputs(tmp_path: Path, **outputs) -> Path:
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return path


def test_defaults_when_nothing_is_given():
    settings = load_settings({}, env={})
    assert settings == Settings()
    assert settings.dsn is None and settings.scale == "medium" and settings.seed == 42
    assert settings.source_of("seed") == "default"


def test_each_layer_overrides_the_one_below(tmp_path):
    outputs = write_outputs(
        tmp_path,
        **{
            stack_outputs.SQL_URL: "postgresql://root@n1:26257,n2:26257/lab",
            stack_outputs.KAFKA_BOOTSTRAP: ["k1:9092", "k2:9092"],
            stack_outputs.TOPOLOGY: "docker-3n-2cpu",
        },
    )
    env = {"LAB_STACK_OUTPUTS": str(outputs), "LAB_TOPOLOGY": "from-env", "LAB_SEED": "5"}
    settings = load_settings({"seed": "9"}, env=env)
    assert settings.dsn == "postgresql://root@n1:26257,n2:26257/lab"
    assert settings.kafka_bootstrap == "k1:9092,k2:9092"
    assert settings.topology == "from-env"
    assert settings.seed == 9
    assert settings.source_of("dsn").startswith("stack outputs")
    assert settings.source_of("topology") == "env LAB_TOPOLOGY"
    assert settings.source_of("seed") == "flag --seed"


def test_cli_stack_outputs_beats_env_stack_outputs(tmp_path):
    a = write_outputs(tmp_path, **{stack_outputs.TOPOLOGY: "a"})
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = write_outputs(b_dir, **{stack_outputs.TOPOLOGY: "b"})
    settings = load_settings({"stack_outputs": str(b)}, env={"LAB_STACK_OUTPUTS": str(a)})
    assert settings.topology == "b"


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ({"seed": "abc"}, {}, "--seed='abc' is not an integer"),
        ({}, {"LAB_SEED": "1.5"}, "LAB_SEED='1.5' is not an integer"),
        ({"scale": "huge"}, {}, "--scale='huge' is not a scale (choose from small, medium, large)"),
        ({}, {"LAB_KAFKA_BOOTSTRAP": "localhost"}, "not host:port"),
        ({"dsn": "mysql://x"}, {}, "is not a PostgreSQL URL"),
        ({"run_dir": "  "}, {}, "is empty"),
    ],
)
def test_bad_values_name_their_source(cli, env, message):
    with pytest.raises(LabError, match=None) as raised:
        load_settings(cli, env=env)
    assert message in str(raised.value)


def test_bad_stack_outputs_files(tmp_path):
    with pytest.raises(LabError, match="does not exist"):
        load_settings({"stack_outputs": str(tmp_path / "missing.json")}, env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabError, match="is not JSON"):
        load_settings({"stack_outputs": str(bad)}, env={})
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(LabError, match="JSON object"):
        load_settings({"stack_outputs": str(listed)}, env={})
    hidden = write_outputs(tmp_path, **{stack_outputs.SQL_URL: "[secret]"})
    with pytest.raises(LabError, match="--show-secrets"):
        load_settings({"stack_outputs": str(hidden)}, env={})


def test_a_bad_dsn_is_reported_without_its_password():
    with pytest.raises(LabError) as raised:
        load_settings({"dsn": "mysql://root:hunter2@db/x"}, env={})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://root:s3cret@h1:26257,h2:26257/db", "postgresql://root:***@h1:26257,h2:26257/db"),
        ("postgresql://root@h:1/db", "postgresql://root@h:1/db"),
        ("host=a password=zz user=b", "host=a password=*** user=b"),
        ("postgresql://u@h/db?sslmode=require&password=p", "postgresql://u@h/db?sslmode=require&password=***"),
    ],
)  # fmt: skip
def test_redact_url(url, shown):
    assert redact_url(url) == shown

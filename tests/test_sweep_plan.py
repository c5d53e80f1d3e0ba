"""The sweep's plan, its refusals and the Pulumi topology, without servers or a Pulumi CLI."""

import json
import sys
import types

import pytest

from tests.conftest import run_cli
from workload import sweep, topology
from workload.endpoints import Endpoints
from workload.errors import LabError
from workload.settings import Settings

NO_PULUMI = {"PATH": "/nonexistent"}  # the CLI must be missing even where it is installed


def cli_env_without_pulumi() -> dict:
    # run_cli starts python by its absolute path, so PATH can lose pulumi without harm.
    return NO_PULUMI


def test_dry_run_prints_the_plan_for_three_stacks_and_two_strategies(tmp_path):
    results = tmp_path / "results"
    done = run_cli(
        "sweep", "--stacks", "docker-1,docker-3,docker-5", "--strategies", "micro-batch,block",
        "--consumers", "1,2", "--batch-sizes", "10,100", "--duration", "5m",
        "--results", str(results), "--dry-run",
        env=cli_env_without_pulumi(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # micro-batch: 2 consumer counts x 2 batch sizes; block: 2 consumer counts (no batch size).
    assert "sweep: 18 configuration(s) on 3 topologies, 300 s of Locust each" in out
    for stack in ("docker-1", "docker-3", "docker-5"):
        assert f"pulumi up: stack {stack} (Pulumi.{stack}.yaml)" in out
        assert f"pulumi destroy: stack {stack}" in out
        assert f"{stack}: block, 2 consumer(s)\n" in out
        assert f"{stack}: micro-batch, 1 consumer(s), batch 10\n" in out
    assert out.count("cdc start; locust --headless") == 18
    assert "note: the Pulumi CLI (`pulumi`) is not on PATH" in out
    assert not results.exists()  # touched nothing


def test_a_missing_pulumi_cli_is_one_error_line_and_exit_2(tmp_path):
    done = run_cli(
        "sweep", "--stacks", "docker-1", "--duration", "5m", "--results", str(tmp_path / "r"),
        env=cli_env_without_pulumi(),
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: the Pulumi CLI (`pulumi`) is not on PATH"
    )
    assert not (tmp_path / "r").exists()


def test_unknown_stack_names_are_refused_before_anything_starts(tmp_path):
    done = run_cli(
        "sweep", "--stacks", "embedded,docker-3,docker-7,kind", "--results", str(tmp_path / "r"),
        "--run-dir", str(tmp_path / ".lab"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: --stacks: no Pulumi.<name>.yaml for docker-7, kind")
    assert "choose from embedded, docker-1" in done.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / ".lab").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategies", "huge"], "--strategies: choose from"),
        (["--consumers", "0"], "every value must be at least 1"),
        (["--consumers", "11"], "--consumers: at most 10"),
        (["--batch-sizes", "x"], "is not a list of whole numbers"),
    ],
)
def test_bad_options_are_one_line(argv, message, tmp_path):
    done = run_cli("sweep", *argv, "--dry-run", "--results", str(tmp_path))
    assert done.returncode == 2 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_batch_sizes_multiply_only_the_strategy_that_batches():
    options = sweep.SweepOptions(
        stacks=("embedded",), strategies=("block", "micro-batch"), consumers=(1, 2),
        batch_sizes=(10, 100),
    )  # fmt: skip
    labels = [c.label for c in sweep.configurations(options)]
    assert labels == [
        "embedded: block, 1 consumer(s)",
        "embedded: block, 2 consumer(s)",
        "embedded: micro-batch, 1 consumer(s), batch 10",
        "embedded: micro-batch, 1 consumer(s), batch 100",
        "embedded: micro-batch, 2 consumer(s), batch 10",
        "embedded: micro-batch, 2 consumer(s), batch 100",
    ]


# -- the Pulumi topology ----------------------------------------------------------------------


def test_require_pulumi_cli_names_what_is_missing():
    with pytest.raises(LabError, match=r"Pulumi CLI \(`pulumi`\) is not on PATH"):
        topology.require_pulumi_cli(which=lambda _: None)
    assert topology.require_pulumi_cli(which=lambda _: "/opt/pulumi") == "/opt/pulumi"


def test_every_committed_stack_is_known():
    assert {"docker-1", "docker-3", "docker-5", "k8s-3", "k8s-5", "k8s-9"} <= set(
        topology.known_stacks()
    )
    topology.check_stack_names(["embedded", "docker-1", "k8s-9"])


class FakeOutput:
    """What the Automation API's ``OutputValue`` exposes."""

    def __init__(self, value, secret=False):
        self.value, self.secret = value, secret


OUTPUTS = {
    "sqlUrl": FakeOutput(
        "postgresql://lab:pw@localhost:26257,localhost:26258,localhost:26259/defaultdb"
        "?sslmode=disable&load_balance_hosts=random",
        secret=True,
    ),
    "kafkaBootstrap": FakeOutput(["localhost:9092", "localhost:9093"]),
    "topology": FakeOutput("docker-3n-2cpu"),
    "adminUrls": FakeOutput(["http://localhost:8080"]),
}


def test_stack_outputs_map_to_the_settings_every_command_reads():
    base = Settings(dsn="postgresql://elsewhere/db", scale="small", seed=7)
    values = topology.output_values(OUTPUTS)
    settings = topology.settings_from_outputs(values, base, "docker-3")
    assert settings.dsn.startswith("postgresql://lab:pw@localhost:26257,localhost:26258")
    assert settings.kafka_bootstrap == "localhost:9092,localhost:9093"
    assert settings.topology == "docker-3n-2cpu"
    assert (settings.scale, settings.seed) == ("small", 7)  # the sweep's own stay
    assert settings.source_of("dsn") == "stack docker-3 outputs"
    endpoints = topology.endpoints_from_settings(settings)
    assert endpoints.topology == "docker-3n-2cpu" and not endpoints.embedded
    assert topology.sql_nodes(endpoints.dsn) == [
        ("localhost", "26257"), ("localhost", "26258"), ("localhost", "26259"),
    ]  # fmt: skip


def test_bad_or_missing_outputs_are_lab_errors_that_hide_the_password():
    with pytest.raises(LabError, match="stack docker-1 exported no sqlUrl"):
        topology.settings_from_outputs({"kafkaBootstrap": "h:1"}, Settings(), "docker-1")
    with pytest.raises(LabError) as raised:
        topology.settings_from_outputs(
            {"sqlUrl": "mysql://u:secret@h/db", "kafkaBootstrap": "h:1"}, Settings(), "docker-1"
        )
    assert "output sqlUrl" in str(raised.value) and "secret" not in str(raised.value)


class FakeStack:
    def __init__(self, log):
        self.log = log

    def up(self, on_output):
        self.log.append("up")
        on_output("Updating (docker-3)\n")
        return types.SimpleNamespace(outputs=OUTPUTS)

    def destroy(self, on_output):
        self.log.append("destroy")
        on_output("Destroying (docker-3)\n")


@pytest.fixture
def fake_automation(monkeypatch):
    """The Automation API module as PulumiTopology calls it, recording the calls."""
    calls = []
    module = types.ModuleType("pulumi.automation")

    def create_or_select_stack(stack_name, work_dir):
        calls.append(("select", stack_name, work_dir))
        return FakeStack(calls)

    module.create_or_select_stack = create_or_select_stack
    monkeypatch.setitem(sys.modules, "pulumi.automation", module)
    import pulumi

    monkeypatch.setattr(pulumi, "automation", module, raising=False)
    monkeypatch.setattr(topology.shutil, "which", lambda _: "/opt/pulumi")
    return calls


def test_pulumi_topology_selects_ups_waits_and_destroys(fake_automation, monkeypatch):
    waited = []
    monkeypatch.setattr(topology, "wait_healthy", lambda e, p, timeout: waited.append(e))
    lines = []
    with topology.PulumiTopology("docker-3", Settings(), progress=lines.append) as deployment:
        assert fake_automation[:2] == [("select", "docker-3", str(topology.REPO)), "up"]
        assert deployment.endpoints.kafka_bootstrap == "localhost:9092,localhost:9093"
        assert deployment.outputs["topology"] == "docker-3n-2cpu"
    assert fake_automation[-1] == "destroy"
    assert [e.topology for e in waited] == ["docker-3n-2cpu"]
    assert "   pulumi: Updating (docker-3)" in lines
    assert not any("pw" in line for line in lines)  # the URL is shown redacted


def test_pulumi_topology_destroys_a_stack_that_never_got_healthy(fake_automation, monkeypatch):
    def never(*_, **__):
        raise LabError("not healthy after 600 s: SQL on localhost:26257: refused")

    monkeypatch.setattr(topology, "wait_healthy", never)
    with pytest.raises(LabError, match="not healthy"):
        with topology.PulumiTopology("docker-3", Settings(), progress=lambda _: None):
            pass
    assert fake_automation[1:] == ["up", "destroy"]


# -- the loop, with a stand-in topology -------------------------------------------------------


class StandInTopology(topology.Topology):
    def __init__(self, name, log, fail_up=False):
        self.name, self.log, self.fail_up = name, log, fail_up

    def plan(self):
        return []

    def __enter__(self):
        self.log.append(f"up {self.name}")
        if self.fail_up:  # as PulumiTopology does: a half-made stack is torn down too
            self.__exit__(None, None, None)
            raise LabError("pulumi up failed")
        endpoints = Endpoints("postgresql://x/db", "h:1", self.name, embedded=False)
        return topology.Deployment(endpoints, Settings())

    def __exit__(self, *exc):
        self.log.append(f"down {self.name}")


def test_failures_are_recorded_the_sweep_goes_on_and_ctrl_c_still_reports(monkeypatch, tmp_path):
    log = []
    monkeypatch.setattr(topology.shutil, "which", lambda _: "/opt/pulumi")
    monkeypatch.setattr(sweep, "prepare_data", lambda d, p: log.append("seed"))
    ran = []

    def run_configuration(config, options, deployment, work, index, progress):
        ran.append(config.label)
        if config.stack == "docker-3":
            raise KeyboardInterrupt
        if config.strategy == "block":
            raise RuntimeError("locust exited 1\nmore")
        return sweep.Outcome(config, "done", "ok")

    monkeypatch.setattr(sweep, "run_configuration", run_configuration)
    monkeypatch.setattr(sweep, "_write_report", lambda result, options: log.append("report"))
    options = sweep.SweepOptions(
        stacks=("docker-1", "docker-5", "docker-3"), strategies=("micro-batch", "block"),
        consumers=(1,), batch_sizes=(10,), results_dir=tmp_path,
    )  # fmt: skip

    def factory(name, settings, progress):
        return StandInTopology(name, log, fail_up=name == "docker-5")

    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(options, Settings(), progress=lambda _: None, topology_factory=factory)
    assert log == [
        "up docker-1", "seed", "down docker-1",
        "up docker-5", "down docker-5",  # torn down although up failed half-way
        "up docker-3", "seed", "down docker-3",  # Ctrl-C: torn down, then reported
        "report",
    ]  # fmt: skip
    [summary] = (tmp_path / "sweeps").glob("*.json")
    outcomes = json.loads(summary.read_text())["outcomes"]
    assert [(o["stack"], o["strategy"], o["status"]) for o in outcomes] == [
        ("docker-1", "micro-batch", "done"),
        ("docker-1", "block", "failed"),
        ("docker-5", "micro-batch", "failed"),
        ("docker-5", "block", "failed"),
        ("docker-3", "micro-batch", "not run"),
        ("docker-3", "block", "not run"),
    ]
    assert outcomes[1]["detail"] == "RuntimeError: locust exited 1"
    assert outcomes[2]["detail"] == "[docker-5] LabError: pulumi up failed"
    assert json.loads(summary.read_text())["interrupted"] is True

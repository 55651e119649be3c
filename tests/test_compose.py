"""docker-compose.yml only runs `featurestore` subcommands that the CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from featurestore.cli import build_parser

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
APP_SERVICES = {"apply", "worker", "producer", "backfill", "backfill-spark", "compact", "serve", "stats"}


def _load_compose(text: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        return _tiny_compose_parser(text)
    return yaml.safe_load(text)


def _tiny_compose_parser(text: str) -> dict[str, Any]:
    """Just enough YAML for this file: service names, `build`, `entrypoint` and flow-list `command`s."""
    services: dict[str, dict[str, Any]] = {}
    in_services = False
    current: dict[str, Any] | None = None
    pending_key: str | None = None
    buffer = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            in_services = line.startswith("services:")
            current = None
            continue
        if not in_services:
            continue
        if indent == 2 and line.rstrip().endswith(":"):
            current = services.setdefault(line.strip()[:-1], {})
            continue
        if current is None:
            continue
        if pending_key:  # continuation of a multi-line flow list
            buffer += " " + line.strip()
            if buffer.rstrip().endswith("]"):
                current[pending_key] = _flow_list(buffer)
                pending_key = None
            continue
        match = re.match(r"^ {4}(build|command|entrypoint):\s*(.*)$", line)
        if match:
            key, value = match.groups()
            if value.startswith("[") and not value.rstrip().endswith("]"):
                pending_key, buffer = key, value
            elif value.startswith("["):
                current[key] = _flow_list(value)
            else:
                current[key] = value.strip().strip("'\"")
    return {"services": services}


def _flow_list(text: str) -> list[str]:
    return [item.strip().strip("'\"") for item in text.strip()[1:-1].split(",") if item.strip()]


def _featurestore_subcommands(compose: dict[str, Any]) -> dict[str, str]:
    """Service -> the `featurestore` subcommand it runs (the image's entrypoint is `featurestore`)."""
    used = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            command = command.split()
        if not command:
            continue
        in_shell = re.search(r"\bfeaturestore\s+([a-z][a-z-]*)", " ".join(command))
        if command[0] == "featurestore":
            used[name] = command[1]
        elif "build" in service and "entrypoint" not in service:
            used[name] = command[0]
        elif in_shell:  # a shell loop running featurestore
            used[name] = in_shell.group(1)
    return used


def _parser_subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if action.__class__.__name__ == "_SubParsersAction":
            return set(action.choices)
    return set()


def test_compose_file_has_the_expected_services() -> None:
    compose = _load_compose(COMPOSE_FILE.read_text())
    assert {"kafka", "kafka-init", "redis", "postgres", *APP_SERVICES} <= set(compose["services"])
    assert set(_featurestore_subcommands(compose)) == APP_SERVICES


def test_tiny_parser_agrees_with_yaml() -> None:
    text = COMPOSE_FILE.read_text()
    assert _featurestore_subcommands(_tiny_compose_parser(text)) == _featurestore_subcommands(_load_compose(text))


def test_compose_runs_only_existing_subcommands() -> None:
    used = _featurestore_subcommands(_load_compose(COMPOSE_FILE.read_text()))
    available = _parser_subcommands()
    missing = {service: sub for service, sub in used.items() if sub not in available}
    assert not missing, (f"docker-compose.yml runs featurestore subcommands the CLI lacks: {missing}; "
                         f"the CLI has {sorted(available)}")


def test_worker_probes_listen_on_every_interface_of_the_container() -> None:
    """The worker's metrics server binds loopback by default; in compose it must serve the network."""
    text = COMPOSE_FILE.read_text()
    for compose in (_load_compose(text), _tiny_compose_parser(text)):
        worker = compose["services"]["worker"]
        args = build_parser().parse_args(worker["command"])
        env = worker.get("environment") or {}  # the tiny parser reads no environment
        assert (args.metrics_host or env.get("FEATURESTORE_METRICS_HOST")) == "0.0.0.0", worker


def test_feature_servers_listen_on_every_interface_with_replicas() -> None:
    """`featurestore serve` binds loopback by default; in compose it must serve the network, twice over."""
    text = COMPOSE_FILE.read_text()
    compose = _load_compose(text)
    serve = compose["services"]["serve"]
    args = build_parser().parse_args(serve["command"])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 6566)
    assert serve["deploy"]["replicas"] == 2 and "/readyz" in " ".join(serve["healthcheck"]["test"])
    # the shared server settings (the Redis URL overridable: the redis-cluster profile)
    assert serve["environment"]["FEATURESTORE_REDIS_URL"] == "${FEATURESTORE_REDIS_URL:-redis://redis:6379/0}"


def test_spark_profile_runs_the_official_image() -> None:
    """The `spark` profile: a master from the official Apache Spark image of the driver's pyspark version,
    a worker built FROM that image (plus Python 3.11 and this package), and the driver on this project's image."""
    import pyspark

    compose = _load_compose(COMPOSE_FILE.read_text())
    services = compose["services"]
    tag = f"apache/spark:{pyspark.__version__}-scala2.13-java17-python3-ubuntu"
    master, worker, driver = services["spark-master"], services["spark-worker"], services["backfill-spark"]
    assert all(s["profiles"] == ["spark"] for s in (master, worker, driver))
    assert master["image"] == tag and "build" not in master
    assert master["command"][:2] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.master.Master"]
    assert worker["entrypoint"][:3] == ["/opt/spark/bin/spark-class", "org.apache.spark.deploy.worker.Worker",
                                        "spark://spark-master:7077"]
    dockerfile = COMPOSE_FILE.parent / worker["build"]["dockerfile"]
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    version = worker["build"]["args"]["SPARK_VERSION"]
    assert version == pyspark.__version__ and f"ARG SPARK_VERSION={version}" in lines
    assert "FROM apache/spark:${SPARK_VERSION}-scala2.13-java17-python3-ubuntu" in lines
    assert any("python3.11" in line and "apt-get install" in line for line in lines)
    env = driver["environment"]
    assert env["PYSPARK_PYTHON"] in " ".join(lines)  # the worker image's Python, named by the driver
    assert driver["build"]["args"] == {"EXTRAS": "spark", "SPARK_VERSION": version}
    assert "dockerfile" not in driver["build"]
    project_image = (COMPOSE_FILE.parent / "Dockerfile").read_text()
    assert f"ARG SPARK_VERSION={version}" in project_image and '"pyspark==${SPARK_VERSION}"' in project_image
    assert "libpostgresql-jdbc-java" in project_image  # the driver's JDBC jar, at the default path
    args = build_parser().parse_args(driver["command"])
    assert (args.engine, args.source, args.spark_master) == ("spark", "postgres", "spark://spark-master:7077")


def test_redis_cluster_profile_runs_three_masters_the_stack_can_point_at() -> None:
    """The `redis-cluster` profile: three cluster-enabled masters of the official image with the online store's
    Redis settings, a one-shot job creating the cluster, and the stack's Redis URL overridable to it."""
    compose = _load_compose(COMPOSE_FILE.read_text())
    services = compose["services"]
    nodes = [services[f"redis-node-{i}"] for i in (1, 2, 3)]
    for node in nodes:
        assert node["profiles"] == ["redis-cluster"] and node["image"].startswith("redis:")
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--hash-max-listpack-value") + 1] == "8192"
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    create = services["redis-cluster-create"]
    script = create["entrypoint"][-1]
    assert "--cluster create" in script and script.count(":6379") == 3 and "--cluster-replicas 0" in script
    assert set(create["depends_on"]) == {"redis-node-1", "redis-node-2", "redis-node-3"}
    assert compose["services"]["worker"]["environment"]["FEATURESTORE_REDIS_URL"] == \
        "${FEATURESTORE_REDIS_URL:-redis://redis:6379/0}"

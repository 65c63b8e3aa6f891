"""docker/: the image recipe and the one-host compose cluster (no Docker engine runs here; see docs)."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import require_tool
from tests.deploy.chart import CHART, REPO


def load_module(path: Path) -> Any:
    """A script copied into the image (not installed), as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DOCKER = REPO / "docker"
# docker-compose 1.29 (Debian) ships the Compose Specification schema it validates with.
COMPOSE_SPEC = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append(pending)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage."""
    out: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_dockerfile_is_multistage_and_runs_unprivileged() -> None:
    build, runtime = stages(DOCKER / "Dockerfile")
    assert build[0][1].endswith(" AS build") and runtime[0][1].endswith(" AS runtime")
    assert any(k == "COPY" and a.startswith("--from=build ") for k, a in runtime)
    user = [a for k, a in runtime if k == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert json.loads(next(a for k, a in runtime if k == "ENTRYPOINT")) == ["celltap"]
    # Nothing in the runtime stage installs a compiler or build tools.
    assert not any(k == "RUN" and re.search(r"apt-get|pip install", a) for k, a in runtime)


def test_registrar_is_in_the_image_where_the_chart_runs_it() -> None:
    (_, runtime) = stages(DOCKER / "Dockerfile")
    copies = [shlex.split(a) for k, a in runtime if k == "COPY" and not a.startswith("--from")]
    assert ["docker/cell_registrar.py", "/opt/celltap/deploy/cell_registrar.py"] in copies
    assert "!docker/cell_registrar.py" in (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "/opt/celltap/deploy/cell_registrar.py" in (CHART / "templates/cells.yaml").read_text()


def test_image_installs_like_the_readme() -> None:
    (build, _) = stages(DOCKER / "Dockerfile")
    runs = " ".join(a for k, a in build if k == "RUN")
    assert "bash scripts/setup.sh" in runs  # what scripts/demo.sh (README command 1) runs
    assert "bash scripts/setup.sh" in (REPO / "scripts/demo.sh").read_text()


def copied_sources(tmp_path: Path) -> Path:
    """A directory holding exactly what the build stage COPYs from the context (Docker's rules:
    a directory source copies its contents into the target, a file lands in a target ending in /)."""
    (build, _) = stages(DOCKER / "Dockerfile")
    dest = tmp_path / "context"
    dest.mkdir()
    for kind, args in build:
        if kind != "COPY" or args.startswith("--from"):
            continue
        *sources, target = shlex.split(args)
        for src in sources:
            path = REPO / src
            assert path.exists(), f"Dockerfile copies {src}, which is not in the repository"
            if path.is_dir():
                shutil.copytree(
                    path,
                    dest / target,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            else:
                out = dest / target / path.name if target.endswith("/") else dest / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)
    return dest


def installed_folders() -> list[str]:
    """The top-level folders setup.py installs: celltap/ and its COMPONENTS (read from setup.py)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (components,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["COMPONENTS"]
    ]
    return ["celltap", *components]


def test_image_copies_every_package_the_project_installs(tmp_path: Path) -> None:
    ctx = copied_sources(tmp_path)
    for top in installed_folders():
        assert (ctx / top / "__init__.py").is_file(), f"setup.py installs {top}/; the image lacks it"
    for f in ("scripts/setup.sh", "pyproject.toml", "setup.py"):
        assert (ctx / f).is_file(), f"the build stage needs {f}"


def test_copied_sources_provide_every_subcommand(tmp_path: Path) -> None:
    # Import the CLI from the copied tree only (first on sys.path), and list its subcommands.
    ctx = copied_sources(tmp_path)
    probe = (
        "import argparse, json, celltap.cli as c; p = c.build_parser();"
        "sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction));"
        "print(json.dumps([c.__file__, sorted(sub.choices)]))"
    )
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ctx), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([python, "-c", probe], cwd=ctx, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    where, image_cmds = json.loads(out.stdout)
    assert where.startswith(str(ctx))
    repo = subprocess.run([python, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert image_cmds == json.loads(repo.stdout)[1]
    assert {"incubator", "cell", "analyzer", "collector", "node"} <= set(image_cmds)


def compose() -> dict[str, Any]:
    """docker/compose.yaml, parsed."""
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_validates_with_docker_compose(tmp_path: Path) -> None:
    tool = require_tool("docker-compose")
    proc = subprocess.run(
        [tool, "-f", str(DOCKER / "compose.yaml"), "config"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert {"etcd", "incubator", "cell-0", "cell-1", "collector", "node-0", "prometheus", "grafana"} <= set(
        resolved["services"]
    )
    # And a broken file is refused, so the check above can fail.
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  x:\n    image: a\n    ports: {bad: 1}\n")
    assert subprocess.run([tool, "-f", str(bad), "config"], capture_output=True, timeout=60).returncode != 0


def test_compose_matches_the_compose_spec_schema() -> None:
    if not COMPOSE_SPEC.is_file():
        pytest.skip("the Compose Specification schema comes with Debian's docker-compose package")
    schema = json.loads(COMPOSE_SPEC.read_text())
    jsonschema.Draft7Validator(schema).validate(compose())


def test_compose_runs_components_as_the_chart_does() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        if svc.get("image", "").startswith("celltap/"):
            caps = set(svc.get("cap_add", []))
            if name == "incubator":
                assert svc["user"].startswith("0") and caps == {"NET_RAW"}
                assert svc["network_mode"] == "host"
            else:
                assert svc["user"] == "10001:10001" and not caps, name
            assert svc["cap_drop"] == ["ALL"] and svc["read_only"] is True, name


def test_compose_configs_are_accepted_by_the_components(tmp_path: Path) -> None:
    from celltap.cell.sftap_config import parse_config as parse_sftap
    from celltap.collector.node_config import config_from_dict as node_config
    from celltap.incubator.config import parse_config as parse_incubator

    from tests.deploy.pods import collector_config

    cfg = DOCKER / "config"
    parse_incubator(yaml.safe_load((cfg / "incubator.yaml").read_text()))
    collector = collector_config((cfg / "collector.yaml").read_text())
    # The certificates the `certs` service writes (docker/gen_certs.py), where the configs expect them.
    certs = tmp_path / "celltap-tls"
    load_module(DOCKER / "gen_certs.py").main(["--out", str(certs), "--node-names", "node-0"])
    node = yaml.safe_load((cfg / "node.yaml").read_text())
    for section in (node["tls"], collector.tls):
        for key, path in section.items():
            section[key] = path.replace("/etc/celltap-tls", str(certs))
            assert Path(section[key]).is_file(), (key, path)
    node_config(node)
    parse_sftap(yaml.safe_load((cfg / "sftap.yaml").read_text()))
    # The compose cells use the chart's default abstractor configuration, not a drifting copy.
    chart_default = yaml.safe_load(
        yaml.safe_load((CHART / "values.yaml").read_text())["cells"]["sftapConfig"]
    )
    assert yaml.safe_load((cfg / "sftap.yaml").read_text()) == chart_default


def test_compose_commands_parse_with_the_real_cli() -> None:
    from tests.deploy.pods import load_registrar, parse_celltap

    services = compose()["services"]
    registered = {}
    for name, svc in services.items():
        if not svc.get("image", "").startswith("celltap/"):
            continue
        if svc.get("entrypoint") == ["python", "/opt/celltap/deploy/cell_registrar.py"]:
            args = load_registrar().parse_args(svc["command"])
            registered[args.id] = args
            continue
        if svc.get("entrypoint") == ["python", "/opt/celltap/deploy/gen_certs.py"]:
            certs = load_module(DOCKER / "gen_certs.py").parse_args(svc["command"])
            assert "node-0" in certs.node_names.split(",")  # the name the collector dials
            continue
        ns = parse_celltap(svc["command"])
        assert ns.command == svc["command"][0], name
    # Each cell is registered at the host port its VXLAN input is published on, for the incubator.
    for cell_id, args in registered.items():
        cell = services[f"cell-{cell_id}"]
        host_port = next(p.split(":")[1] for p in cell["ports"] if p.endswith(":4789/udp"))
        assert args.input == f"vxlan://127.0.0.1:{host_port}"
        assert args.health == f"http://cell-{cell_id}:9471/metrics"
    assert sorted(registered) == ["0", "1"]


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    # The layout inside the Prometheus container: the config with the chart's rule files beside it.
    shutil.copy(DOCKER / "prometheus/prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(CHART / "files/alerts", tmp_path / "rules")
    proc = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
    # Every celltap scrape target is a service (and port) the compose file defines.
    services = compose()["services"]
    prom = yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host = target.split(":")[0]
            assert host == "host.docker.internal" or host in services, target
            if host in services and services[host].get("image", "").startswith("celltap/"):
                assert target.split(":")[1] in " ".join(services[host]["command"]) + " 8090 9464", target


def test_grafana_provisions_the_chart_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {host: inside for host, inside, *_ in (v.split(":") for v in grafana["volumes"])}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/celltap.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert [host for host, inside in mounts.items() if inside == path] == ["../helm/celltap/files/dashboards"]
    assert (DOCKER / "../helm/celltap/files/dashboards").resolve() == (CHART / "files/dashboards").resolve()
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_runtime_copies_are_not_ignored() -> None:
    # Docker's and buildah's context honours Dockerfile.dockerignore: a file the runtime stage copies
    # from docker/ (which the ignore file excludes as a whole) must be let back in by name.
    (_, runtime) = stages(DOCKER / "Dockerfile")
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "docker/*" in ignore
    for kind, args in runtime:
        if kind == "COPY" and not args.startswith("--from"):
            *sources, _target = shlex.split(args)
            for src in sources:
                if src.startswith("docker/"):
                    assert f"!{src}" in ignore, f"{src} is copied but Dockerfile.dockerignore leaves it out"

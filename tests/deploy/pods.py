"""Pods as the kubelet would start them: env from the downward API, $(VAR) expansion, and the
components' own parsers for the args and config files the chart renders."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from celltap.cli import build_parser
from tests.deploy.chart import NAMESPACE, REPO, find

# What the kubelet would put in the downward-API variables of pod <name>-<index>.
POD_IP = "10.244.1.7"
NODE_NAME = "tap-node-1"


def _cli() -> argparse.ArgumentParser:
    return build_parser()


def subcommand_options(name: str) -> set[str]:
    """The option strings of one `celltap` subcommand (skip when that plane is not built yet)."""
    parser = _cli()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if name not in sub.choices:
        pytest.skip(f"`celltap {name}` is not available in this checkout")
    return {o for a in sub.choices[name]._actions for o in a.option_strings}


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


def pod_env(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """Values the downward API gives the container's env entries for a pod of that name."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        path = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "")
        env[e["name"]] = {
            "metadata.name": pod_name,
            "metadata.namespace": NAMESPACE,
            "status.podIP": POD_IP,
            "metadata.labels['apps.kubernetes.io/pod-index']": pod_name.rsplit("-", 1)[-1],
            "spec.nodeName": NODE_NAME,
        }.get(path, e.get("value", ""))
    return env


def parse_celltap(args: list[str]) -> argparse.Namespace:
    """Parse container args (the image's entrypoint is `celltap`) with the real parser."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _cli().parse_args(args)
    except SystemExit:
        pytest.fail(f"celltap rejects the chart's args {args}: {err.getvalue().strip()}")


def workload(docs: list[dict[str, Any]], kind: str, suffix: str) -> tuple[dict[str, Any], str]:
    """A workload and the name of its first pod."""
    w = find(docs, kind, suffix)
    return w, f"{w['metadata']['name']}-{'0' if kind == 'StatefulSet' else 'x1y2z'}"


def config_data(docs: list[dict[str, Any]], key: str) -> str:
    """One file of the chart's component ConfigMap."""
    return find(docs, "ConfigMap", "-config")["data"][key]


REGISTRATION_FLAGS = ("--registry", "--cluster", "--advertise", "--weight")


def without_registration(args: list[str]) -> list[str]:
    """The args less the cell's registry registration flags (and their values)."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in REGISTRATION_FLAGS:
            skip = True
        else:
            out.append(a)
    return out


def incubator_takes_static_cells() -> bool:
    """Whether the incubator's config parser accepts a static cell list without a registry."""
    from celltap.incubator.config import ConfigError, parse_config

    try:
        parse_config({"capture": "afpacket:eth1", "cells": [{"id": "0", "output": "vxlan://10.0.0.1:4789"}]})
    except ConfigError:
        return False
    return True


def collector_config(text: str) -> Any:
    """Check a collector YAML as `celltap collector` does, its `routing` section included."""
    from celltap.collector.cluster_collector import router_config
    from celltap.collector.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load(text))
    router_config("collector-test", cfg.routing, None)
    return cfg


def load_registrar() -> Any:
    """docker/cell_registrar.py as a module (it is copied into the image, not installed)."""
    spec = importlib.util.spec_from_file_location("cell_registrar", REPO / "docker/cell_registrar.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_init_container(
    docs: list[dict[str, Any]], spec: dict[str, Any], key: str, pod_name: str, root: Path
) -> dict[str, Any]:
    """Run a pod's config init container's own shell command (the ConfigMap under root/etc, its
    output under root/run, as the pod mounts them) and return the config file it wrote, parsed."""
    (init,) = spec["initContainers"]
    etc, run = root / "etc", root / "run"
    etc.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    (etc / key).write_text(config_data(docs, key))
    script = init["command"][2].replace("/etc/celltap", str(etc)).replace("/run/celltap", str(run))
    subprocess.run([*init["command"][:2], script], env=pod_env(init, pod_name), check=True, timeout=10)
    return yaml.safe_load((run / key).read_text())


def mount_tls_secret(
    docs: list[dict[str, Any]], spec: dict[str, Any], config: dict[str, Any], root: Path
) -> None:
    """Write the TLS Secret a pod mounts (volume `tls`) under `root`, and point `config["tls"]` there."""
    import base64

    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    secret = find(docs, "Secret", volume["secret"]["secretName"])
    root.mkdir(parents=True, exist_ok=True)
    for key, value in secret["data"].items():
        (root / key).write_bytes(base64.b64decode(value))
    config["tls"] = {k: v.replace(mount["mountPath"], str(root)) for k, v in config["tls"].items()}

"""
The example deployment in C{etc/kubernetes/}: its YAML parses, its parts
name each other consistently, and the node config it builds (the ConfigMap's
TOML with the Secret's token added, as the container does) is one the node's
schema accepts, finding its peers through the headless Service's SRV name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from callnet.config import NodeConfig
from callnet.config_checks import discover_target
from callnet.config_load import parse_config
from tests.daemon import TWISTD, free_port, require_twistd, start_node, wait_until_listening

HERE = Path(__file__).resolve().parent.parent / "etc" / "kubernetes"


def documents() -> dict[str, dict[str, Any]]:
    """Every object the example defines, by kind (one of each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(HERE.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert document["kind"] not in found, f"two {document['kind']}s"
            found[document["kind"]] = document
    return found


def container_config(objects: dict[str, dict[str, Any]]) -> NodeConfig:
    """The config file the container writes: the ConfigMap's TOML, then the token's table."""
    script = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    added = re.search(r"printf '(.*?)' ", script)
    assert added is not None, "the container adds no [security] table"
    token = objects["Secret"]["stringData"]["cluster_token"]
    text = objects["ConfigMap"]["data"]["callnet.toml"]
    text += added.group(1).replace("\\n", "\n").replace("%s", token)
    return parse_config(tomllib.loads(text), "etc/kubernetes/configmap.yaml")


class KubernetesExampleTests(SynchronousTestCase):
    """The example deployment is whole and its config is valid."""

    def test_the_parts_are_there(self) -> None:
        """
        The example defines a StatefulSet, a headless Service, a ConfigMap, a
        Secret, and a disruption budget for the StatefulSet's pods.
        """
        objects = documents()
        self.assertEqual(
            set(objects),
            {"StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"},
        )
        budget = objects["PodDisruptionBudget"]["spec"]
        self.assertEqual(budget["selector"], objects["StatefulSet"]["spec"]["selector"])
        self.assertEqual(budget["maxUnavailable"], 1)
        self.assertEqual(objects["Service"]["spec"]["clusterIP"], "None")
        self.assertTrue(objects["Service"]["spec"]["publishNotReadyAddresses"])
        self.assertEqual(
            objects["StatefulSet"]["spec"]["serviceName"], objects["Service"]["metadata"]["name"]
        )

    def test_config_is_the_schemas(self) -> None:
        """The config the container builds parses, with the Secret's token, and no fixed name
        (each node is its pod)."""
        objects = documents()
        config = container_config(objects)
        self.assertEqual(
            config.security.cluster_token, objects["Secret"]["stringData"]["cluster_token"]
        )
        self.assertNotIn(
            "name", tomllib.loads(objects["ConfigMap"]["data"]["callnet.toml"])["node"]
        )
        self.assertEqual(config.peers, ())

    def test_discover_names_the_service(self) -> None:
        """discover asks for the SRV records of the headless Service's named port, in its
        namespace, and the node listens on that port."""
        objects = documents()
        config = container_config(objects)
        service = objects["Service"]
        [port] = service["spec"]["ports"]
        assert config.cluster.discover is not None
        scheme, name, _ = discover_target(config.cluster.discover)
        self.assertEqual(scheme, "dns-srv")
        namespace = service["metadata"]["namespace"]
        self.assertEqual(
            name,
            f"_{port['name']}._tcp.{service['metadata']['name']}.{namespace}.svc.cluster.local",
        )
        self.assertEqual(config.listen, (f"tcp:{port['port']}",))
        container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(
            [(p["name"], p["containerPort"]) for p in container["ports"]],
            [(port["targetPort"], port["port"])],
        )

    def test_probes_ping_the_node(self) -> None:
        """Readiness and liveness probes run callnet ping against the node's own port."""
        objects = documents()
        container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
        port = container["ports"][0]["containerPort"]
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            self.assertEqual(command[:3], ["callnet", "ping", f"127.0.0.1:{port}"], probe)
            self.assertLess(
                float(command[command.index("--timeout") + 1]), container[probe]["timeoutSeconds"]
            )

    def test_grace_covers_the_drain(self) -> None:
        """The pod's termination grace outlasts the node's drain (shutdown_grace + 3 s)."""
        objects = documents()
        config = container_config(objects)
        spec = objects["StatefulSet"]["spec"]["template"]["spec"]
        self.assertGreaterEqual(spec["terminationGracePeriodSeconds"], config.shutdown_grace + 3)

    def test_secret_and_config_are_mounted(self) -> None:
        """The container mounts the ConfigMap and Secret where its script reads them."""
        objects = documents()
        spec = objects["StatefulSet"]["spec"]["template"]["spec"]
        script = spec["containers"][0]["args"][0]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        self.assertEqual(
            volumes["config"]["configMap"]["name"], objects["ConfigMap"]["metadata"]["name"]
        )
        self.assertEqual(
            volumes["token"]["secret"]["secretName"], objects["Secret"]["metadata"]["name"]
        )
        self.assertIn(f"{mounts['config']}/callnet.toml", script)
        self.assertIn(f"{mounts['token']}/cluster_token", script)


def test_the_container_runs_and_answers_its_probes(tmp_path: Path) -> None:
    """
    The container's own script, run here with its paths and port moved into
    the test's directory: it builds the config with the Secret's token, the
    node starts and logs JSON lines, both probes' exact commands succeed
    against it, and once SIGTERM has stopped it within the pod's grace, the
    readiness probe fails.
    """
    require_twistd()
    objects = documents()
    container = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    pod_port = container["ports"][0]["containerPort"]
    port = free_port()
    config = objects["ConfigMap"]["data"]["callnet.toml"]
    config = config.replace(f'"tcp:{pod_port}"', f'"tcp:{port}:interface=127.0.0.1"')
    # No lookups out of the machine: a name server that refuses at once.
    config = config.replace("[cluster]\n", '[cluster]\ndiscover_nameservers = ["127.0.0.1:9"]\n')
    (tmp_path / "callnet.toml").write_text(config)
    # Any token the Secret may hold reaches the node as it is, quotes and backslashes too.
    token = 'a "quoted" token \\ with a backslash, 0123456789'
    (tmp_path / "cluster_token").write_text(token)
    script = container["args"][0]
    for pod_path, here in (
        ("/etc/callnet/callnet.toml", tmp_path / "callnet.toml"),
        ("/etc/callnet-token/cluster_token", tmp_path / "cluster_token"),
        ("/tmp/callnet.toml", tmp_path / "built.toml"),
    ):
        assert pod_path in script, pod_path
        script = script.replace(pod_path, str(here))
    path = f"{TWISTD.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    node = start_node(
        [*container["command"], script],
        "127.0.0.1",
        port,
        tmp_path / "node.log",
        cwd=tmp_path,
        env={"PATH": path},
    )
    environment = {**os.environ, "PATH": path}

    def probe(name: str) -> subprocess.CompletedProcess[str]:
        command = [
            part.replace(f":{pod_port}", f":{port}") for part in container[name]["exec"]["command"]
        ]
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=environment,
            timeout=container[name]["timeoutSeconds"] + 5,
        )

    try:
        wait_until_listening(node)
        built = tmp_path / "built.toml"
        assert built.stat().st_mode & 0o077 == 0, "the token file is shared"
        assert tomllib.loads(built.read_text())["security"]["cluster_token"] == token
        for name in ("readinessProbe", "livenessProbe"):
            answered = probe(name)
            assert answered.returncode == 0, (name, answered.stdout, answered.stderr)
        grace = objects["StatefulSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        node.terminate(timeout=grace)
    except BaseException:
        print(node.output()[-4000:])
        raise
    finally:
        node.kill()
    lines = [line for line in node.output().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]
    assert any("callnet node " in event.get("log_text", "") for event in events), lines[:5]
    stopped = probe("readinessProbe")
    assert stopped.returncode != 0, stopped.stdout

"""
The example deployment in C{etc/kubernetes/}: its YAML parses, its parts
name each other consistently, and the node config it builds (the ConfigMap's
TOML with the Secret's token added, as the container does) is one the node's
schema accepts, finding its peers through the headless Service's SRV name.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from callnet.config import NodeConfig
from callnet.config_checks import discover_target
from callnet.config_load import parse_config

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
        """The example defines a StatefulSet, a headless Service, a ConfigMap and a Secret."""
        objects = documents()
        self.assertEqual(set(objects), {"StatefulSet", "Service", "ConfigMap", "Secret"})
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

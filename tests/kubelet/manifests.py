"""Static pod manifests for the kubelet suite (v1 Pod objects, written as JSON: the kubelet reads YAML or JSON)."""

from __future__ import annotations

from typing import Any

BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"

HOLDER = """
head -c 5000000 /dev/urandom > /tmp/blob
for i in $(seq 1 200); do echo "log line $i"; done
x=$(head -c 24000000 /dev/zero | tr '\\0' a)
while true; do sleep 1; done
"""
"""Five MB in the writable layer, some log, 24 MB of memory held by the shell (no exec: it must stay)."""


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A busybox container running ``script`` under sh."""
    return {"name": name, "image": BUSYBOX, "command": ["sh", "-c"], "args": [script], **extra}


def pod(name: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": list(containers), "terminationGracePeriodSeconds": 2, **spec},
    }

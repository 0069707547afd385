"""The committed generated stubs match proto/runtime/v1/api.proto; the package layering holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2

from moorage.cri import pb

TOP = Path(__file__).resolve().parents[2]
SRC = TOP / "src" / "moorage"


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    out = tmp_path / "api.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{TOP / 'proto'}",
            f"--descriptor_set_out={out}",
            "runtime/v1/api.proto",
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in _all_messages(compiled.message_type):
        for field in message.field:
            field.ClearField("json_name")  # protoc adds it to descriptor sets, the generated code leaves it out
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert compiled == committed, "api.proto changed: run `make protos` and commit src/moorage/cri/_gen"


def _all_messages(
    messages: Iterable[descriptor_pb2.DescriptorProto],
) -> Iterator[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _all_messages(message.nested_type)


def test_wire_identity_of_the_cri_package() -> None:
    assert pb.DESCRIPTOR.package == "runtime.v1"
    assert set(pb.DESCRIPTOR.services_by_name) == {"RuntimeService", "ImageService"}
    # A few field numbers the kubelet depends on, spot-checked against cri-api v0.36.
    assert pb.PodSandboxConfig.DESCRIPTOR.fields_by_name["linux"].number == 8
    assert pb.ContainerConfig.DESCRIPTOR.fields_by_name["linux"].number == 15
    assert pb.ContainerStatus.DESCRIPTOR.fields_by_name["image_id"].number == 17
    assert pb.CgroupDriver.Value("SYSTEMD") == 0
    assert pb.CgroupDriver.Value("CGROUPFS") == 1


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# package -> moorage packages it must not import (STYLE.md: one-way dependencies; only daemon.py knows all)
FORBIDDEN = {
    "state": {"moorage.api", "moorage.runtime", "moorage.images", "moorage.store", "moorage.node", "moorage.cli"},
    "store": {"moorage.api", "moorage.runtime", "moorage.images", "moorage.node", "moorage.cli"},
    "node": {"moorage.api", "moorage.runtime", "moorage.images", "moorage.cli"},
    "runtime": {"moorage.api", "moorage.cli", "moorage.daemon"},
    "images": {"moorage.api", "moorage.cli", "moorage.daemon"},
    "api": {"moorage.cli", "moorage.daemon"},
}


ALLOWED = {"moorage.cri"}
"""The CRI message types are the domain's vocabulary (as cri-api's Go types are CRI-O's): anyone may use them."""


def test_import_direction() -> None:
    broken = []
    for package, forbidden in FORBIDDEN.items():
        for path in (SRC / package).rglob("*.py"):
            for name in imports_of(path) - ALLOWED:
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    broken.append(f"{path.relative_to(SRC)} imports {name}")
    assert not broken


def test_only_the_generated_facade_imports_gen() -> None:
    users = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if "_gen" not in p.parts and any(n.startswith("moorage.cri._gen") for n in imports_of(p))
    ]
    assert users == ["cri/__init__.py"]

"""CDI devices: names, spec files in real directories, and their edits to a real spec built by the builder."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.runtime import spec
from moorage.runtime.spec import cdi
from tests.fixtures.spec import inputs

ZERO = os.stat("/dev/zero")


def write_spec(directory: Path, name: str, doc: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def vendor_spec(*devices: dict[str, Any], edits: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"cdiVersion": "0.6.0", "kind": "example.com/dev", "devices": list(devices)}
    if edits:
        doc["containerEdits"] = edits
    return doc


def device(name: str, **edits: Any) -> dict[str, Any]:
    return {"name": name, "containerEdits": edits}


def build(tmp_path: Path, dirs: tuple[Path, ...], names: list[str], **container: Any) -> dict[str, Any]:
    base = inputs(tmp_path, CDI_devices=[pb.CDIDevice(name=n) for n in names], **container)
    return spec.build(replace(base, cdi_spec_dirs=dirs))


# --- names ----------------------------------------------------------------------------------------------------


def test_names_come_from_the_field_then_the_annotations_each_once() -> None:
    annotations = {
        "cdi.k8s.io/b": "example.com/dev=two, example.com/dev=one",
        "cdi.k8s.io/a": "example.com/dev=three",
        "other": "example.com/dev=ignored",
    }
    got = cdi.requested(["example.com/dev=one"], annotations)
    assert got == ["example.com/dev=one", "example.com/dev=three", "example.com/dev=two"]


def test_names_follow_the_cdi_librarys_character_rules() -> None:
    assert cdi.requested(["vendor_x.com/gpu.sub=0:1"], {}) == ["vendor_x.com/gpu.sub=0:1"]


@pytest.mark.parametrize(
    "name", ["gpu0", "example.com/dev", "example.com/dev=", "/dev=x", "example.com/d v=x", "1vendor.com/dev=x"]
)
def test_a_name_that_is_not_fully_qualified_is_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"CDI_devices\[0\].name: .* is not a fully qualified CDI device name"):
        cdi.requested([name], {})


def test_a_malformed_annotation_names_its_key() -> None:
    with pytest.raises(InvalidArgument, match=r"annotations\['cdi.k8s.io/x'\]: 'bad' is not"):
        cdi.requested([], {"cdi.k8s.io/x": "bad"})


# --- resolving ------------------------------------------------------------------------------------------------


def test_a_later_directory_wins_and_yaml_is_read(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    write_spec(etc, "a.json", vendor_spec(device("one", env=["FROM=etc"])))
    write_spec(
        run,
        "a.yaml",
        "cdiVersion: 0.6.0\nkind: example.com/dev\ndevices:\n- name: one\n  containerEdits:\n    env: [FROM=run]\n",
    )
    [found] = cdi.resolve(["example.com/dev=one"], [etc, run])
    assert found.edits["env"] == ["FROM=run"]
    assert found.spec_file == run / "a.yaml"


def test_two_files_of_one_directory_make_a_device_ambiguous(tmp_path: Path) -> None:
    write_spec(tmp_path, "a.json", vendor_spec(device("one")))
    write_spec(tmp_path, "b.json", vendor_spec(device("one")))
    with pytest.raises(FailedPrecondition, match=r"example\.com/dev=one is defined by more than one spec file"):
        cdi.resolve(["example.com/dev=one"], [tmp_path])


def test_an_unknown_device_names_the_directories_and_the_unreadable_specs(tmp_path: Path) -> None:
    write_spec(tmp_path, "broken.json", "{not json")
    write_spec(tmp_path, "nokind.json", {"cdiVersion": "0.6.0", "devices": [device("x")]})
    with pytest.raises(FailedPrecondition) as err:
        cdi.resolve(["example.com/dev=gone"], [tmp_path, tmp_path / "absent"])
    message = str(err.value)
    assert f"example.com/dev=gone is defined by no CDI spec in {tmp_path}, {tmp_path / 'absent'}" in message
    assert "broken.json: not valid JSON" in message
    assert "nokind.json: kind None is not vendor.com/class" in message


@pytest.mark.parametrize(
    ("edits", "complaint"),
    [
        ({"env": ["NOVALUE"]}, r"env\[0\] is not NAME=VALUE"),
        ({"deviceNodes": [{"path": "dev/x"}]}, r"deviceNodes\[0\].path must be an absolute path"),
        ({"deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]}, "permissions must only contain"),
        ({"mounts": [{"hostPath": "/tmp", "containerPath": "rel"}]}, "needs a hostPath and an absolute"),
        ({"hooks": [{"hookName": "whenever", "path": "/bin/true"}]}, r"hooks\[0\].hookName must be one of"),
        ({"additionalGids": [-1]}, r"additionalGids\[0\] is not a group id"),
        ({"mounts": [{"hostPath": "/tmp", "containerPath": "/x", "options": "ro"}]}, "options must be a list"),
    ],
)
def test_a_spec_with_malformed_edits_defines_nothing(tmp_path: Path, edits: dict[str, Any], complaint: str) -> None:
    write_spec(tmp_path, "bad.json", vendor_spec(device("one", **edits)))
    with pytest.raises(FailedPrecondition, match=complaint):
        cdi.resolve(["example.com/dev=one"], [tmp_path])


# --- applying -------------------------------------------------------------------------------------------------


def test_edits_reach_the_spec(tmp_path: Path) -> None:
    host = tmp_path / "host-dir"
    host.mkdir()
    write_spec(
        tmp_path / "cdi",
        "vendor.json",
        vendor_spec(
            device(
                "zero",
                env=["CDI_DEVICE=zero", "PATH=/cdi/bin"],
                deviceNodes=[{"path": "/dev/moorage-zero", "hostPath": "/dev/zero", "permissions": "rw"}],
                mounts=[{"hostPath": str(host), "containerPath": "/cdi", "options": ["ro"]}],
                hooks=[{"hookName": "createContainer", "path": "/bin/true", "args": ["true", "x"]}],
                additionalGids=[4242],
            ),
            edits={"env": ["VENDOR=example"]},
        ),
    )
    oci = build(tmp_path, (tmp_path / "cdi",), ["example.com/dev=zero"])
    env = oci["process"]["env"]
    assert {"VENDOR=example", "CDI_DEVICE=zero", "PATH=/cdi/bin"} <= set(env)
    assert [e for e in env if e.startswith("PATH=")] == ["PATH=/cdi/bin"]  # replaced, not doubled
    [node] = [d for d in oci["linux"]["devices"] if d["path"] == "/dev/moorage-zero"]
    assert (node["type"], node["major"], node["minor"]) == ("c", os.major(ZERO.st_rdev), os.minor(ZERO.st_rdev))
    rule = {"allow": True, "type": "c", "major": node["major"], "minor": node["minor"], "access": "rw"}
    assert rule in oci["linux"]["resources"]["devices"]
    [mount] = [m for m in oci["mounts"] if m["destination"] == "/cdi"]
    assert mount == {"destination": "/cdi", "type": "bind", "source": str(host), "options": ["bind", "ro"]}
    assert oci["hooks"]["createContainer"] == [{"path": "/bin/true", "args": ["true", "x"]}]
    assert 4242 in oci["process"]["user"]["additionalGids"]


def test_spec_wide_edits_are_applied_once_for_two_of_its_devices(tmp_path: Path) -> None:
    write_spec(tmp_path, "v.json", vendor_spec(device("a"), device("b"), edits={"additionalGids": [7], "env": ["X=1"]}))
    oci = build(tmp_path, (tmp_path,), ["example.com/dev=a", "example.com/dev=b"])
    assert oci["process"]["env"].count("X=1") == 1
    assert oci["process"]["user"]["additionalGids"].count(7) == 1


def test_annotations_ask_for_devices_too(tmp_path: Path) -> None:
    write_spec(tmp_path, "v.json", vendor_spec(device("a", env=["VIA=annotation"])))
    oci = build(tmp_path, (tmp_path,), [], annotations={"cdi.k8s.io/req": "example.com/dev=a"})
    assert "VIA=annotation" in oci["process"]["env"]


def test_a_missing_host_device_without_numbers_is_a_precondition_error(tmp_path: Path) -> None:
    write_spec(tmp_path, "v.json", vendor_spec(device("a", deviceNodes=[{"path": "/dev/moorage-none"}])))
    with pytest.raises(FailedPrecondition, match="device node /dev/moorage-none: No such file or directory"):
        build(tmp_path, (tmp_path,), ["example.com/dev=a"])


def test_a_regular_file_is_not_a_device_node(tmp_path: Path) -> None:
    regular = tmp_path / "plain"
    regular.write_text("")
    write_spec(tmp_path, "v.json", vendor_spec(device("a", deviceNodes=[{"path": "/dev/x", "hostPath": str(regular)}])))
    with pytest.raises(FailedPrecondition, match="is not a device node"):
        build(tmp_path, (tmp_path,), ["example.com/dev=a"])


def test_network_devices_are_refused(tmp_path: Path) -> None:
    net = {"netDevices": [{"hostInterfaceName": "eth9", "name": "eth1"}]}
    write_spec(tmp_path, "v.json", vendor_spec(device("a", **net)))
    with pytest.raises(FailedPrecondition, match="netDevices are not supported"):
        build(tmp_path, (tmp_path,), ["example.com/dev=a"])


def test_a_container_that_asks_for_no_device_reads_no_spec(tmp_path: Path) -> None:
    write_spec(tmp_path, "broken.json", "{")
    assert "hooks" not in build(tmp_path, (tmp_path,), [])


def test_a_node_gets_the_containers_user_and_the_runtimes_mode_and_rdt_keys_pass(tmp_path: Path) -> None:
    nodes = [{"path": "/dev/moorage-zero", "hostPath": "/dev/zero"}]
    rdt = {"closID": "c1", "memBwSchema": "MB:0=50", "enableMBM": True}
    write_spec(tmp_path, "v.json", vendor_spec(device("a", deviceNodes=nodes, intelRdt=rdt)))
    sc = pb.LinuxContainerSecurityContext(run_as_user=pb.Int64Value(value=1000))
    oci = build(tmp_path, (tmp_path,), ["example.com/dev=a"], sc=sc)
    [node] = [d for d in oci["linux"]["devices"] if d["path"] == "/dev/moorage-zero"]
    assert (node["uid"], node["gid"]) == (1000, 1000)
    assert "fileMode" not in node  # the runtime's 0666, not the host node's mode
    assert oci["linux"]["intelRdt"] == rdt


def test_a_type_the_host_node_does_not_have_is_refused(tmp_path: Path) -> None:
    nodes = [{"path": "/dev/x", "hostPath": "/dev/zero", "type": "b"}]
    write_spec(tmp_path, "v.json", vendor_spec(device("a", deviceNodes=nodes)))
    with pytest.raises(FailedPrecondition, match="/dev/zero is of type c, not the b the spec names"):
        build(tmp_path, (tmp_path,), ["example.com/dev=a"])


def test_a_fifo_named_like_a_spec_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "trap.json")
    with pytest.raises(FailedPrecondition, match=r"trap\.json: not a regular file"):
        cdi.resolve(["example.com/dev=a"], [tmp_path])

"""The pure parts of image volumes: which mounts are volumes and what is refused, the config kept for the
container (image_ref) and the one the spec is built from (read-only binds), and removal of what is not there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from moorage.cri import pb
from moorage.errors import InvalidArgument, NotFound
from moorage.runtime.containers import image_volumes
from moorage.runtime.spec import mounts
from moorage.store.image_records import ImageRecord

IMAGE = ImageRecord(id="sha256:" + "ab" * 32, manifest_digest="sha256:" + "cd" * 32, size=1, config=b"{}")


async def find(text: str) -> ImageRecord | None:
    return IMAGE if text in ("volume:1", IMAGE.id) else None


def volume(ref: str = "volume:1", *, readonly: bool = True, sub_path: str = "", path: str = "/vol") -> pb.Mount:
    return pb.Mount(container_path=path, readonly=readonly, image=pb.ImageSpec(image=ref), image_sub_path=sub_path)


def resolve(*ms: pb.Mount) -> list[image_volumes.ImageVolume]:
    return asyncio.run(image_volumes.resolve(list(ms), find))


def test_only_mounts_with_an_image_are_volumes(tmp_path: Path) -> None:
    plain = pb.Mount(container_path="/data", host_path=str(tmp_path))
    found = resolve(plain, volume(sub_path="etc/ssl"), volume(IMAGE.id, path="/other"))
    assert [(v.index, v.image.id, v.sub_path) for v in found] == [(1, IMAGE.id, "etc/ssl"), (2, IMAGE.id, "")]


@pytest.mark.parametrize(
    ("mount", "error", "text"),
    [
        (volume(readonly=False), InvalidArgument, "mounts[0]: the image volume of 'volume:1' at /vol must be readonly"),
        (volume("missing:2"), NotFound, "mounts[0].image: image 'missing:2' is not on the node; pull it first"),
        (volume(sub_path="/etc"), InvalidArgument, "mounts[0].image_sub_path: '/etc' must be relative"),
        (volume(sub_path="a/../../b"), InvalidArgument, "must not contain '..'"),
        (pb.Mount(container_path="/x", host_path="/tmp", image_sub_path="etc"), InvalidArgument,
         "mounts[0].image_sub_path: only an image volume"),
    ],
)  # fmt: skip
def test_refused(mount: pb.Mount, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=None) as caught:
        resolve(mount)
    assert text in str(caught.value)


def test_the_kept_config_reports_the_image_id_and_the_spec_gets_read_only_binds(tmp_path: Path) -> None:
    config = pb.ContainerConfig(
        mounts=[
            pb.Mount(container_path="/data", host_path=str(tmp_path)),
            volume(sub_path="etc", path="/vol"),
        ]
    )
    config.mounts[1].propagation = pb.MountPropagation.PROPAGATION_HOST_TO_CONTAINER
    found = resolve(*config.mounts)
    kept = image_volumes.recorded(config, found)
    assert kept.mounts[1].image.image_ref == IMAGE.id
    assert kept.mounts[1].image.image == "volume:1"
    assert not config.mounts[1].image.image_ref  # the request itself is left alone

    source = tmp_path / "volume-etc"
    source.mkdir()
    spec_config = image_volumes.as_binds(kept, {1: source})
    oci = mounts.build(spec_config.mounts, {}, privileged=False, readonly_rootfs=False)
    (bind,) = [m for m in oci if m["destination"] == "/vol"]
    assert bind == {"destination": "/vol", "type": "bind", "source": str(source), "options": ["rbind", "rslave", "ro"]}
    assert kept.mounts[1].HasField("image")  # the kept config still names the image


def test_a_volume_that_was_not_mounted_never_reaches_the_spec() -> None:
    with pytest.raises(Exception, match="not mounted before the spec was built"):
        mounts.build([volume()], {}, privileged=False, readonly_rootfs=False)


def test_removing_a_container_without_volumes_is_a_no_op(tmp_path: Path) -> None:
    image_volumes.remove(tmp_path / "no-bundle")
    bundle = tmp_path / "bundle"
    (bundle / image_volumes.VOLUMES_DIR / "0" / "rootfs").mkdir(parents=True)  # made, then a crash before mount
    (bundle / image_volumes.VOLUMES_DIR / "0" / "empty").mkdir()
    image_volumes.remove(bundle)
    assert list(bundle.iterdir()) == []

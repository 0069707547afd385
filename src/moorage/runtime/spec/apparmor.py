"""process.apparmorProfile: which AppArmor profile a container runs under.

=================================================  =====================================================
request                                            process.apparmorProfile
=================================================  =====================================================
``apparmor`` RuntimeDefault, or nothing at all     ``moorage-default`` (:mod:`.apparmor_default`)
``apparmor`` Unconfined                            none
``apparmor`` Localhost ``ref``                     ``ref`` (a leading ``localhost/`` dropped); must be loaded
no ``apparmor``: ``apparmor_profile``              "runtime/default" = default, "unconfined" = none,
                                                   "localhost/<name>" = <name>
=================================================  =====================================================

The structured field wins over the deprecated string when both are set (the kubelet sends both), as in containerd
and CRI-O. A privileged container that would get the default runs unconfined instead; a Localhost profile it names
still applies. On a node where AppArmor is off (``host`` is None) nothing is applied: RuntimeDefault means
unconfined, and a Localhost profile is refused, since it cannot be enforced.
"""

from __future__ import annotations

from typing import Protocol

from moorage.cri import pb
from moorage.errors import FailedPrecondition, InvalidArgument
from moorage.node.apparmor_default import NAME as DEFAULT_PROFILE

__all__ = ["DEFAULT_PROFILE", "AppArmorHost", "select"]

LOCALHOST_PREFIX = "localhost/"
RUNTIME_DEFAULT = "runtime/default"
UNCONFINED = "unconfined"


class AppArmorHost(Protocol):
    def loaded(self, profile: str) -> bool | None:
        """Whether the kernel has ``profile`` loaded; None when that cannot be known."""
        ...


def select(security: pb.LinuxContainerSecurityContext, host: AppArmorHost | None) -> str | None:
    """The profile the container runs under, or None for unconfined."""
    kind, name, field = _requested(security)
    if kind == UNCONFINED or (kind == RUNTIME_DEFAULT and (host is None or security.privileged)):
        return None
    if kind == RUNTIME_DEFAULT:
        return DEFAULT_PROFILE
    if host is None:
        raise FailedPrecondition(f"{field}: AppArmor profile {name!r} asked for, but AppArmor is off on this node")
    if host.loaded(name) is False:
        raise FailedPrecondition(
            f"{field}: AppArmor profile {name!r} is not loaded on this node (load it with apparmor_parser first)"
        )
    return name


def _requested(security: pb.LinuxContainerSecurityContext) -> tuple[str, str, str]:
    """(RUNTIME_DEFAULT | UNCONFINED | "localhost", profile name, the field it came from)."""
    if security.HasField("apparmor"):
        profile = security.apparmor
        kind = profile.profile_type
        if kind == pb.SecurityProfile.ProfileType.RuntimeDefault:
            return RUNTIME_DEFAULT, "", "apparmor"
        if kind == pb.SecurityProfile.ProfileType.Unconfined:
            return UNCONFINED, "", "apparmor"
        name = profile.localhost_ref.removeprefix(LOCALHOST_PREFIX)
        if not name:
            raise InvalidArgument("apparmor.localhost_ref: a Localhost AppArmor profile needs a profile name")
        return "localhost", name, "apparmor.localhost_ref"
    legacy = security.apparmor_profile
    if legacy in ("", RUNTIME_DEFAULT):
        return RUNTIME_DEFAULT, "", "apparmor_profile"
    if legacy == UNCONFINED:
        return UNCONFINED, "", "apparmor_profile"
    if legacy.startswith(LOCALHOST_PREFIX) and legacy != LOCALHOST_PREFIX:
        return "localhost", legacy.removeprefix(LOCALHOST_PREFIX), "apparmor_profile"
    raise InvalidArgument(
        f"apparmor_profile: unknown profile {legacy!r} (want runtime/default, unconfined or localhost/<name>)"
    )

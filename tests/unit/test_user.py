"""process.user (runtime/spec/user.py) beyond what test_spec.py covers: a group needs a user."""

from __future__ import annotations

import pytest

from moorage.cri import pb
from moorage.errors import InvalidArgument
from moorage.runtime.spec import user


@pytest.mark.parametrize(
    ("security", "refused"),
    [
        (pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=5)), True),
        (pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=0)), True),  # set, even if 0
        (pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(value=5), run_as_username="app"), False),
        (pb.LinuxContainerSecurityContext(run_as_group=pb.Int64Value(), run_as_user=pb.Int64Value()), False),
        (pb.LinuxContainerSecurityContext(), False),
        (pb.LinuxSandboxSecurityContext(run_as_group=pb.Int64Value(value=5)), True),
        (pb.LinuxSandboxSecurityContext(run_as_group=pb.Int64Value(), run_as_user=pb.Int64Value()), False),
    ],
)
def test_run_as_group_needs_a_user(
    security: pb.LinuxContainerSecurityContext | pb.LinuxSandboxSecurityContext, refused: bool
) -> None:
    if refused:
        with pytest.raises(InvalidArgument, match=r"^sc\.run_as_group is set without run_as_user"):
            user.require_user_for_group(security, "sc")
    else:
        user.require_user_for_group(security, "sc")

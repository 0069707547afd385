"""Moorage's own AppArmor profile, ``moorage-default``: what a container gets for ``RuntimeDefault`` (and when it asks
for nothing), loaded by :mod:`moorage.node.apparmor` on first use.

An ordinary container keeps what it needs (its files, the network, the capabilities its spec grants, signals and
tracing among its own processes) and loses what only an escape needs: mounting, and writing the kernel's knobs
under /proc and /sys (the runtime mounts most of them read-only too; the profile still holds when a container is
given CAP_SYS_ADMIN or its own ``readonly_paths``). The text is self-contained (no ``#include``), so it loads on a
node whatever its /etc/apparmor.d holds.
"""

from __future__ import annotations

NAME = "moorage-default"

PROFILE = f"""\
# {NAME}: the AppArmor profile of Moorage's containers that ask for RuntimeDefault.
@{{PROC}}=/proc/
@{{SYS}}=/sys/

profile {NAME} flags=(attach_disconnected,mediate_deleted) {{
  # What an ordinary container does: its files, the network, the capabilities its spec grants.
  file,
  network,
  capability,
  umount,

  # Signals and tracing among the container's own processes; signals from the node (the runtime stopping it).
  signal (send, receive) peer={NAME},
  signal (receive) peer=unconfined,
  ptrace (read, trace, readby, tracedby) peer={NAME},

  # The filesystem stays as the runtime made it.
  deny mount,
  deny pivot_root,

  # /proc: no kernel knob written. The files right under /proc (sysrq-trigger, kmsg, ...), the sysctls, and the
  # kernel's own directories; per-process files (/proc/<pid>/...) stay writable.
  deny @{{PROC}}* w,
  deny @{{PROC}}sys/** w,
  deny @{{PROC}}{{acpi,bus,driver,fs,irq,scsi,sysvipc,tty}}/** w,
  deny @{{PROC}}{{kcore,kmem,mem,kmsg}} rwklx,

  # /sys: nothing written but the cgroup filesystem; firmware and the security filesystem not even read.
  deny @{{SYS}}[^f]*/** wklx,
  deny @{{SYS}}f[^s]*/** wklx,
  deny @{{SYS}}fs/[^c]*/** wklx,
  deny @{{SYS}}fs/c[^g]*/** wklx,
  deny @{{SYS}}fs/cg[^r]*/** wklx,
  deny @{{SYS}}firmware/** rwklx,
  deny @{{SYS}}kernel/security/** rwklx,
}}
"""

"""The daemon's own process limits: open descriptors.

The default soft ``RLIMIT_NOFILE`` (1024) is a relic of ``select()``; a daemon serving many pods, exec
sessions and registry pulls needs more, and the hard limit says how many the host allows. containerd and
CRI-O run under systemd units that set ``LimitNOFILE``; a daemon started by hand raises its own soft limit
to the hard one at start, as Go programs do since Go 1.19.
"""

from __future__ import annotations

import resource

import structlog

log = structlog.get_logger(__name__)


def raise_open_files() -> int:
    """Raise the soft descriptor limit to the hard one; the soft limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (soft, hard):  # RLIMIT_NOFILE cannot be infinite: nothing to raise to
        return soft
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a container's seccomp profile, say: keep what we have
            log.warning("cannot raise the open file limit", soft=soft, hard=hard, error=str(exc))
            return soft
        log.debug("raised the open file limit", soft=hard, was=soft)
        return hard
    return soft

"""Cgroup usage and limit readers and disk usage on fake cgroup trees (v1 and v2), and the cpu rate."""

from __future__ import annotations

import os
from pathlib import Path

from moorage.node.cgroupinfo import CgroupHost
from moorage.observe.cgroup_spec import CgroupSpec, read_spec, weight_to_shares
from moorage.observe.disk import disk_usage, filesystem_of
from moorage.observe.stats import CpuRates, DeviceIo, Hugetlb, Pressure, PsiLine, read_cgroup


def v1_host(root: Path) -> CgroupHost:
    """A v1 layout with cpu and cpuacct sharing one hierarchy (as most distributions mount them)."""
    controllers = {"cpu": "cpu,cpuacct", "cpuacct": "cpu,cpuacct", "memory": "memory", "pids": "pids"}
    return CgroupHost("v1", {c: str(root / d) for c, d in controllers.items()}, None, (), systemd=False)


def v2_host(root: Path) -> CgroupHost:
    return CgroupHost("v2", {}, str(root), ("cpu", "memory", "pids"), systemd=False)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_reads_each_controller_and_subtracts_inactive_file(tmp_path: Path) -> None:
    group = "pod/c1"
    write(tmp_path / "cpu,cpuacct" / group / "cpuacct.usage", "123456789\n")
    write(tmp_path / "memory" / group / "memory.usage_in_bytes", "10000\n")
    write(tmp_path / "memory" / group / "memory.limit_in_bytes", "9223372036854771712\n")
    stat = "rss 1\ninactive_file 7\ntotal_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 50\ntotal_pgmajfault 2\n"
    write(tmp_path / "memory" / group / "memory.stat", stat)
    write(tmp_path / "pids" / group / "pids.current", "3\n")
    st = read_cgroup("/pod/c1", v1_host(tmp_path))
    assert (st.cpu_usage_ns, st.memory_usage, st.working_set, st.rss) == (123456789, 10000, 7000, 4000)
    assert (st.page_faults, st.major_page_faults, st.pids, st.available) == (50, 2, 3, None)


def test_v2_reads_the_unified_group_and_a_limit(tmp_path: Path) -> None:
    group = tmp_path / "pod" / "c1"
    write(group / "cpu.stat", "usage_usec 2500\nuser_usec 2000\n")
    write(group / "memory.current", "5000\n")
    write(group / "memory.max", "8000\n")
    write(group / "memory.stat", "anon 1000\ninactive_file 6000\npgfault 9\npgmajfault 1\n")
    write(group / "pids.current", "2\n")
    st = read_cgroup("pod/c1", v2_host(tmp_path))
    assert (st.cpu_usage_ns, st.memory_usage, st.working_set, st.available) == (2_500_000, 5000, 0, 8000)
    assert (st.rss, st.page_faults, st.major_page_faults, st.pids) == (1000, 9, 1, 2)


def test_a_gone_cgroup_reads_as_unknown(tmp_path: Path) -> None:
    for host in (v1_host(tmp_path), v2_host(tmp_path)):
        st = read_cgroup("/gone", host)
        assert st.timestamp > 0
        assert (st.cpu_usage_ns, st.memory_usage, st.working_set, st.rss, st.pids) == (None,) * 5


def test_disk_usage_counts_blocks_and_inodes_once(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 8192)
    (tmp_path / "d" / "link").hardlink_to(tmp_path / "d" / "f")
    usage = disk_usage(tmp_path)
    assert usage.inodes == 3  # tmp_path, d, f (the hard link is f)
    assert usage.used_bytes >= 8192
    assert disk_usage(tmp_path / "missing").used_bytes == 0
    fs = filesystem_of(tmp_path)
    st, vfs = os.stat(tmp_path), os.statvfs(tmp_path)
    assert fs is not None
    assert fs.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert (fs.size_bytes, fs.inodes) == (vfs.f_blocks * vfs.f_frsize, vfs.f_files)
    assert filesystem_of(tmp_path / "missing") is None


def test_cpu_rate_needs_two_samples() -> None:
    rates = CpuRates()
    assert rates.rate("c", 1_000_000_000, 0) is None
    assert rates.rate("c", 3_000_000_000, 1_000_000_000) == 500_000_000  # half a core
    assert rates.rate("c", 3_000_000_000, 2_000_000_000) is None  # no time passed
    assert rates.rate("c", 4_000_000_000, 0) is None  # counter reset
    rates.forget("c")
    assert rates.rate("c", 5_000_000_000, 0) is None


PRESSURE = "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=42\n"


def test_v2_reads_cpu_split_swap_oom_pressure_and_io(tmp_path: Path) -> None:
    group = tmp_path / "pod" / "c1"
    write(
        group / "cpu.stat",
        "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 9\nnr_throttled 2\nthrottled_usec 40\n",
    )
    write(group / "memory.current", "5000\n")
    write(group / "memory.max", "max\n")
    write(group / "memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n")
    write(group / "memory.swap.current", "4096\n")
    write(group / "memory.swap.max", "65536\n")
    write(group / "cpu.pressure", PRESSURE)
    write(group / "io.pressure", PRESSURE)
    write(
        group / "io.stat",
        "253:0 rbytes=8192 wbytes=4096 rios=2 wios=1 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=0 rios=1 wios=0\n",
    )
    st = read_cgroup("/pod/c1", v2_host(tmp_path))
    assert (st.cpu_usage_ns, st.cpu_user_ns, st.cpu_system_ns) == (3_000_000, 2_000_000, 1_000_000)
    assert (st.cfs_periods, st.cfs_throttled_periods, st.cfs_throttled_ns) == (9, 2, 40_000)
    assert (st.memory_limit, st.available, st.oom_kills) == (None, None, 1)  # memory.max "max": no limit
    assert (st.swap_usage, st.swap_limit) == (4096, 65536)
    assert set(st.pressure) == {"cpu", "io"}  # no memory.pressure file: none reported
    assert st.pressure["cpu"] == Pressure(PsiLine(123456, 1.5, 0.75, 0.1), PsiLine(42, 0.0, 0.0, 0.0))
    assert st.io == (DeviceIo(253, 0, 8192, 4096, 2, 1), DeviceIo(8, 16, 1, 0, 1, 0))


def test_v1_reads_memsw_as_swap_cpuacct_ticks_oom_and_blkio(tmp_path: Path) -> None:
    group = "pod/c1"
    memory = tmp_path / "memory" / group
    write(memory / "memory.usage_in_bytes", "10000\n")
    write(memory / "memory.limit_in_bytes", "20000\n")
    write(memory / "memory.memsw.usage_in_bytes", "12000\n")
    write(memory / "memory.memsw.limit_in_bytes", "50000\n")
    write(memory / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    write(tmp_path / "cpu,cpuacct" / group / "cpuacct.stat", "user 7\nsystem 3\n")
    write(tmp_path / "cpu,cpuacct" / group / "cpu.stat", "nr_periods 5\nnr_throttled 1\nthrottled_time 123\n")
    blkio = tmp_path / "blkio" / group
    write(
        blkio / "blkio.throttle.io_service_bytes_recursive", "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 1\nTotal 12288\n"
    )
    write(blkio / "blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 2\nTotal 3\n")
    host = v1_host(tmp_path)
    host = CgroupHost(
        "hybrid",
        {**host.v1_controllers, "blkio": str(tmp_path / "blkio")},
        str(tmp_path / "unified"),
        ("hugetlb",),
        systemd=False,
    )
    write(tmp_path / "unified" / group / "memory.pressure", PRESSURE)
    st = read_cgroup(group, host)
    tick = 10**9 // os.sysconf("SC_CLK_TCK")
    assert (st.cpu_user_ns, st.cpu_system_ns) == (7 * tick, 3 * tick)
    assert (st.cfs_periods, st.cfs_throttled_periods, st.cfs_throttled_ns) == (5, 1, 123)
    assert (st.memory_limit, st.swap_usage, st.swap_limit, st.oom_kills) == (20000, 2000, 30000, 4)
    assert st.io == (DeviceIo(8, 0, 4096, 8192, 1, 2),)
    assert set(st.pressure) == {"memory"}  # a hybrid host's PSI comes from its cgroup2 mount


def test_v1_memory_details_own_and_hierarchical_faults_procs_and_hugetlb(tmp_path: Path) -> None:
    group = "pod/c1"
    memory = tmp_path / "memory" / group
    stat = "cache 1\nmapped_file 2\npgfault 30\npgmajfault 3\ntotal_cache 100\ntotal_mapped_file 20\n"
    stat += "active_file 1\ntotal_active_file 11\ntotal_inactive_file 12\ntotal_dirty 13\ntotal_writeback 14\n"
    stat += "total_workingset_refault_anon 15\ntotal_workingset_refault_file 16\n"
    write(memory / "memory.stat", stat + "total_pgfault 50\ntotal_pgmajfault 5\n")
    write(memory / "memory.kmem.usage_in_bytes", "4096\n")
    write(memory / "memory.max_usage_in_bytes", "90000\n")
    write(memory / "memory.failcnt", "7\n")
    write(tmp_path / "pids" / group / "cgroup.procs", "12\n15\n")
    write(tmp_path / "hugetlb" / group / "hugetlb.2MB.usage_in_bytes", "2097152\n")
    write(tmp_path / "hugetlb" / group / "hugetlb.2MB.max_usage_in_bytes", "4194304\n")
    host = v1_host(tmp_path)
    host = CgroupHost("v1", {**host.v1_controllers, "hugetlb": str(tmp_path / "hugetlb")}, None, (), systemd=False)
    st = read_cgroup(group, host)
    assert (st.cache, st.mapped_file, st.kernel, st.max_usage, st.failcnt) == (100, 20, 4096, 90000, 7)
    assert (st.own_page_faults, st.own_major_page_faults, st.page_faults, st.major_page_faults) == (30, 3, 50, 5)
    assert st.procs == (12, 15)
    assert st.hugetlb == (Hugetlb("2MB", 2097152, 4194304),)
    assert (st.active_file, st.inactive_file, st.dirty, st.writeback) == (11, 12, 13, 14)  # the hierarchy's
    assert (st.refault_anon, st.refault_file) == (15, 16)
    assert (st.pgscan, st.pgsteal, st.events_high, st.events_max) == (None, None, None, None)  # v2 only


def test_v2_memory_details_from_stat_events_and_peak(tmp_path: Path) -> None:
    group = tmp_path / "pod" / "c1"
    write(group / "memory.stat", "anon 1\nfile 300\nfile_mapped 40\nkernel_stack 16384\nslab 8192\npgfault 9\n"
          "active_file 21\ninactive_file 22\nfile_dirty 23\nfile_writeback 24\nworkingset_refault_anon 25\n"
          "workingset_refault_file 26\npgscan 27\npgsteal 28\n")  # fmt: skip
    write(group / "memory.events", "low 0\nhigh 2\nmax 3\noom 0\noom_kill 0\n")
    write(group / "memory.peak", "123456\n")
    write(group / "cgroup.procs", "7\n")
    write(group / "hugetlb.2MB.current", "0\n")
    write(group / "hugetlb.2MB.rsvd.current", "2097152\n")  # a reservation, not usage
    st = read_cgroup("pod/c1", v2_host(tmp_path))
    assert (st.cache, st.mapped_file, st.kernel, st.max_usage, st.failcnt) == (300, 40, 16384 + 8192, 123456, 3)
    assert (st.own_page_faults, st.page_faults, st.procs) == (9, 9, (7,))  # v2 counts hierarchically only
    assert st.hugetlb == (Hugetlb("2MB", 0, None),)
    assert (st.active_file, st.inactive_file, st.dirty, st.writeback) == (21, 22, 23, 24)
    assert (st.refault_anon, st.refault_file, st.pgscan, st.pgsteal) == (25, 26, 27, 28)
    assert (st.events_high, st.events_max) == (2, 3)
    write(group / "memory.stat", "kernel 99999\nkernel_stack 1\n")  # newer kernels sum it themselves
    assert read_cgroup("pod/c1", v2_host(tmp_path)).kernel == 99999


def test_v1_spec_reads_each_controller_with_0_for_no_limit(tmp_path: Path) -> None:
    group = "pod/c1"
    cpu, memory = tmp_path / "cpu,cpuacct" / group, tmp_path / "memory" / group
    write(cpu / "cpu.cfs_period_us", "100000\n")
    write(cpu / "cpu.cfs_quota_us", "20000\n")
    write(cpu / "cpu.shares", "1024\n")
    write(memory / "memory.limit_in_bytes", "67108864\n")
    write(memory / "memory.soft_limit_in_bytes", "9223372036854771712\n")
    write(memory / "memory.memsw.limit_in_bytes", "67108864\n")
    write(tmp_path / "pids" / group / "pids.max", "max\n")
    assert read_spec(group, v1_host(tmp_path)) == CgroupSpec(100000, 20000, 1024, 0, 64 << 20, 0)
    write(cpu / "cpu.cfs_quota_us", "-1\n")
    (memory / "memory.memsw.limit_in_bytes").unlink()  # no swap accounting: no swap limit
    assert read_spec(group, v1_host(tmp_path)) == CgroupSpec(100000, 0, 1024, 0, 0, 0)
    assert read_spec("/gone", v1_host(tmp_path)) == CgroupSpec()


def test_v2_spec_reads_cpu_max_and_maps_the_weight_back_to_shares(tmp_path: Path) -> None:
    group = tmp_path / "pod" / "c1"
    write(group / "cpu.max", "20000 100000\n")
    write(group / "cpu.weight", "39\n")  # what runc 1.1 and crun 1.8 write for 1024 shares
    write(group / "memory.max", "67108864\n")
    write(group / "memory.min", "0\n")
    write(group / "memory.swap.max", "0\n")
    write(group / "pids.max", "100\n")
    assert read_spec("pod/c1", v2_host(tmp_path)) == CgroupSpec(100000, 20000, 998, 0, 0, 100)
    write(group / "cpu.max", "max 50000\n")
    spec = read_spec("pod/c1", v2_host(tmp_path))
    assert (spec.cpu_quota, spec.cpu_period) == (0, 50000)  # no quota
    assert (weight_to_shares(1), weight_to_shares(10000), weight_to_shares(100)) == (2, 262144, 2597)
    assert read_spec("/gone", v2_host(tmp_path)) == CgroupSpec()

"""Cgroup and disk usage readers on fake cgroup trees (v1 and v2), and the cpu rate."""

from __future__ import annotations

from pathlib import Path

from moorage.observe.stats import CpuRates, disk_usage, is_v1, read_cgroup


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_reads_each_controller_and_subtracts_inactive_file(tmp_path: Path) -> None:
    write(tmp_path / "memory" / "memory.stat", "cache 0\n")  # the root: memory is mounted, so v1
    group = "pod/c1"
    write(tmp_path / "cpuacct" / group / "cpuacct.usage", "123456789\n")
    write(tmp_path / "memory" / group / "memory.usage_in_bytes", "10000\n")
    write(tmp_path / "memory" / group / "memory.limit_in_bytes", "9223372036854771712\n")
    stat = "rss 1\ninactive_file 7\ntotal_rss 4000\ntotal_inactive_file 3000\ntotal_pgfault 50\ntotal_pgmajfault 2\n"
    write(tmp_path / "memory" / group / "memory.stat", stat)
    write(tmp_path / "pids" / group / "pids.current", "3\n")
    assert is_v1(tmp_path)
    st = read_cgroup("/pod/c1", tmp_path)
    assert (st.cpu_usage_ns, st.memory_usage, st.working_set, st.rss) == (123456789, 10000, 7000, 4000)
    assert (st.page_faults, st.major_page_faults, st.pids, st.available) == (50, 2, 3, None)


def test_v2_reads_the_unified_group_and_a_limit(tmp_path: Path) -> None:
    group = tmp_path / "pod" / "c1"
    write(group / "cpu.stat", "usage_usec 2500\nuser_usec 2000\n")
    write(group / "memory.current", "5000\n")
    write(group / "memory.max", "8000\n")
    write(group / "memory.stat", "anon 1000\ninactive_file 6000\npgfault 9\npgmajfault 1\n")
    write(group / "pids.current", "2\n")
    assert not is_v1(tmp_path)
    st = read_cgroup("pod/c1", tmp_path)
    assert (st.cpu_usage_ns, st.memory_usage, st.working_set, st.available) == (2_500_000, 5000, 0, 8000)
    assert (st.rss, st.page_faults, st.major_page_faults, st.pids) == (1000, 9, 1, 2)


def test_a_gone_cgroup_reads_as_unknown(tmp_path: Path) -> None:
    for root in (tmp_path, tmp_path / "v1"):
        if root != tmp_path:
            write(root / "memory" / "memory.stat", "")
        st = read_cgroup("/gone", root)
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


def test_cpu_rate_needs_two_samples() -> None:
    rates = CpuRates()
    assert rates.rate("c", 1_000_000_000, 0) is None
    assert rates.rate("c", 3_000_000_000, 1_000_000_000) == 500_000_000  # half a core
    assert rates.rate("c", 3_000_000_000, 2_000_000_000) is None  # no time passed
    assert rates.rate("c", 4_000_000_000, 0) is None  # counter reset
    rates.forget("c")
    assert rates.rate("c", 5_000_000_000, 0) is None

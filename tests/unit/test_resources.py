"""ContainerStatus.resources (runtime/spec/resources.py): read back from a spec, merged with an update."""

from __future__ import annotations

from moorage.cri import pb
from moorage.runtime.spec import resources

R = pb.LinuxContainerResources


def test_a_built_spec_reads_back_as_requested() -> None:
    requested = R(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 30,
        memory_swap_limit_in_bytes=2 << 30, cpuset_cpus="0-1", cpuset_mems="0", oom_score_adj=-997,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21)], unified={"memory.high": "1000000"},
    )  # fmt: skip
    spec = {"process": {"oomScoreAdj": -997}, "linux": {"resources": resources.build(requested, [])}}
    assert resources.applied(spec) == requested
    assert resources.from_record(resources.to_record(requested)) == requested
    assert resources.applied({}) == R()


def test_an_update_changes_only_what_it_sets() -> None:
    current = R(
        cpu_period=100000, cpu_quota=50000, cpu_shares=512, memory_limit_in_bytes=1 << 30, oom_score_adj=100,
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21)], unified={"a": "1", "b": "2"},
    )  # fmt: skip
    update = R(
        cpu_quota=20000, oom_score_adj=999, cpuset_cpus="1",
        hugepage_limits=[pb.HugepageLimit(page_size="1GB", limit=1 << 30)], unified={"b": "3"},
    )  # fmt: skip
    assert resources.merge(current, update) == R(
        cpu_period=100000, cpu_quota=20000, cpu_shares=512, memory_limit_in_bytes=1 << 30, cpuset_cpus="1",
        oom_score_adj=100,  # the runtime cannot change it in a running container
        hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=1 << 21), pb.HugepageLimit(page_size="1GB",
                                                                                         limit=1 << 30)],
        unified={"a": "1", "b": "3"},
    )  # fmt: skip
    assert current.cpu_quota == 50000  # not changed in place


def test_hugepage_limits_left_out_without_the_hugetlb_controller() -> None:
    """The kubelet sends a hugepage limit per page size; on a node without hugetlb runc would refuse them."""
    r = pb.LinuxContainerResources(hugepage_limits=[pb.HugepageLimit(page_size="2MB", limit=0)])
    assert resources.build(r, [])["hugepageLimits"] == [{"pageSize": "2MB", "limit": 0}]
    assert "hugepageLimits" not in resources.build(r, [], hugetlb=False)

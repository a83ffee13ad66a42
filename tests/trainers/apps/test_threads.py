"""``trainer.threads`` of the apps (``trainers.apps.threads``): ``auto`` counts the physical cores the process may run
on -- its affinity mask, one per core however many hyper-threads, within a cgroup's CPU quota -- and keeps one for
the rest; an integer is used as given; ``null`` leaves torch alone; anything else is refused naming what is valid.

The CPU topology and the cgroup files are real files written into a folder that stands for ``/sys``; the affinity
is the real one, set in a child process with ``os.sched_setaffinity``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainers.apps.checks import check_threads
from trainers.apps.threads import MAX_AUTO_THREADS, auto_threads, cgroup_cpus, cores_available

ROOT = Path(__file__).resolve().parents[3]
AFFINITY = sorted(os.sched_getaffinity(0))


def _topology(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """``root/cpuN/topology/{physical_package_id,core_id}`` for each CPU N: (package, core)."""
    for cpu, (package, core) in cores.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n", encoding="utf-8")
        (folder / "core_id").write_text(f"{core}\n", encoding="utf-8")
    return root


def _cgroup(root: Path, own: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup v2 tree under ``root/fs`` with ``cpu.max`` files (folder -> content) and a ``/proc/self/cgroup`` that
    puts this process in ``own``."""
    tree = root / "fs"
    (tree / own.lstrip("/")).mkdir(parents=True)
    for folder, content in limits.items():
        (tree / folder.lstrip("/") / "cpu.max").write_text(content + "\n", encoding="utf-8")
    proc = root / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n", encoding="utf-8")
    return tree, proc


def test_hyper_threads_of_one_core_count_once(tmp_path: Path) -> None:
    no_cgroup = tmp_path / "none"
    sys_cpu = _topology(tmp_path / "cpu", {cpu: (0, 0) for cpu in AFFINITY})  # every CPU a thread of core 0
    assert cores_available(sys_cpu, no_cgroup, no_cgroup / "cgroup") == 1
    distinct = _topology(tmp_path / "cpu2", {cpu: (cpu % 2, cpu // 2) for cpu in AFFINITY})
    assert cores_available(distinct, no_cgroup, no_cgroup / "cgroup") == len(AFFINITY)


def test_only_the_cpus_of_the_affinity_mask_count(tmp_path: Path) -> None:
    # the topology lists 64 cores; the process may run on the CPUs of its mask only
    sys_cpu = _topology(tmp_path / "cpu", {cpu: (0, cpu) for cpu in range(max(64, max(AFFINITY) + 1))})
    none = tmp_path / "none"
    assert cores_available(sys_cpu, none, none / "cgroup") == len(AFFINITY)


def test_unreadable_topology_counts_each_cpu(tmp_path: Path) -> None:
    none = tmp_path / "none"
    assert cores_available(none, none, none / "cgroup") == len(AFFINITY)


def test_a_cgroup_quota_bounds_the_count_smallest_along_the_path(tmp_path: Path) -> None:
    tree, proc = _cgroup(tmp_path, "/a/b", {"/a": "150000 100000", "/a/b": "max 100000"})
    assert cgroup_cpus(tree, proc) == 2  # 1.5 CPUs, rounded up; "max" below it lifts nothing
    tree, proc = _cgroup(tmp_path / "2", "/a/b", {"/": "400000 100000", "/a/b": "100000 100000"})
    assert cgroup_cpus(tree, proc) == 1
    sys_cpu = _topology(tmp_path / "cpu", {cpu: (0, cpu) for cpu in AFFINITY})
    assert cores_available(sys_cpu, tree, proc) == 1


def test_no_quota_without_a_cpu_max_or_a_cgroup_v2_line(tmp_path: Path) -> None:
    tree, proc = _cgroup(tmp_path, "/a", {})
    assert cgroup_cpus(tree, proc) is None
    proc.write_text("12:cpu,cpuacct:/a\n", encoding="utf-8")  # cgroup v1 only
    assert cgroup_cpus(tree, proc) is None
    assert cgroup_cpus(tree, tmp_path / "missing") is None


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "two", "Auto"])
def test_a_bad_value_is_refused_naming_what_is_valid(value: object) -> None:
    with pytest.raises(ValueError, match=r"^threads must be") as refused:
        check_threads(value)
    assert str(refused.value) == f"threads must be an integer >= 1, 'auto' or null (torch's setting), got {value!r}"


def _child(code: str) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def test_each_setting_as_the_apps_apply_it_in_a_process_bound_to_one_cpu() -> None:
    found = _child(
        f"""
        import json, os, torch
        from trainers.apps.threads import apply_threads, auto_threads
        os.sched_setaffinity(0, {{{AFFINITY[0]}}})
        torch.set_num_threads(3)
        seen = {{"none": apply_threads(None)}}  # torch's setting, left alone
        seen["auto"] = apply_threads("auto")
        seen["explicit"] = apply_threads(5)  # honoured, even beyond the CPUs
        seen["auto_threads"] = auto_threads()
        print(json.dumps(seen))
        """
    )
    assert found == {"none": 3, "auto": 1, "explicit": 5, "auto_threads": 1}


def test_auto_keeps_a_core_for_the_rest_and_stays_under_the_cap() -> None:
    cores = cores_available()
    assert 1 <= cores <= len(AFFINITY)
    assert auto_threads({}) == (1 if cores == 1 else min(MAX_AUTO_THREADS, cores - 1))


def test_auto_follows_omp_num_threads_and_shares_the_cores_among_local_ranks() -> None:
    assert auto_threads({"OMP_NUM_THREADS": "3"}) == 3  # what torchrun or the user decided, as torch reads it
    assert auto_threads({"OMP_NUM_THREADS": "0", "LOCAL_WORLD_SIZE": "64"}) == 1  # not a count: the share decides
    share = cores_available() // 2
    assert auto_threads({"LOCAL_WORLD_SIZE": "2"}) == (1 if share <= 1 else min(MAX_AUTO_THREADS, share - 1))
    assert auto_threads({"LOCAL_WORLD_SIZE": "many"}) == auto_threads({})


#: each app's config, made small, with what its ``threads`` default is
APPS = {
    "demo": (("trainer.samples=64",), 1),
    "gan": (("trainer.samples=64",), 1),
    "image_field": (("trainer.size=32", "trainer.batch_size=64", "trainer.batches_per_epoch=2"), "auto"),
}


@pytest.mark.parametrize("app", sorted(APPS))
def test_the_config_default_and_an_explicit_setting_reach_torch(app: str) -> None:
    small, default = APPS[app]
    config = ROOT / "trainers" / "apps" / "configs" / f"{app}.yaml"
    found = _child(
        f"""
        import json, tempfile, torch
        from rich.console import Console
        from trainers.apps.threads import auto_threads
        from trainers.config.builder import build

        seen = {{"auto": auto_threads()}}
        for name, overrides in (("default", []), ("three", ["trainer.threads=3"]), ("null", ["trainer.threads=null"])):
            torch.set_num_threads(7)
            with tempfile.TemporaryDirectory() as run_dir:
                trainer = build("{config}", overrides=[*{list(small)!r}, *overrides], run_dir=run_dir,
                                objects={{"console": Console(quiet=True)}})
                seen[name] = torch.get_num_threads()
                seen[name + "_saved"] = trainer.config["trainer"]["threads"]
                trainer.close()
        print(json.dumps(seen))
        """
    )
    expected = found["auto"] if default == "auto" else default
    assert found == {
        "auto": found["auto"],
        "default": expected,
        "default_saved": default,
        "three": 3,
        "three_saved": 3,
        "null": 7,  # torch's setting, as it was
        "null_saved": None,
    }

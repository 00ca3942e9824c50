"""Specification of the MetaCLIP passes on Ray (clip/curation/passes.py, tools/metaclip_curate.py): the
same per-shard functions run as one Ray task per shard and give exactly the local process pool's counts,
curated lists and summary; a Ray session the caller started is left running; asking for Ray without
ray installed is a clear error."""
from __future__ import annotations

import io
import json
import os
import random
import sys
import tarfile
import time
import warnings

import pytest
import ray

from clip.curation import ShardError, balance_pool, count_pool, curated_list_path, load_metadata
from clip.curation.passes import map_shards
from eva_core.data.toy_world import COLORS, SHAPES

def quiet_metadata(entries):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_metadata(list(entries))


def write_pool(directory, num_shards=3, per_shard=200, seed=0) -> list[str]:
    """Caption shards of a long-tailed colour/shape pool (``.txt`` and ``.jsonl``)."""
    rng = random.Random(seed)
    colors = list(COLORS)
    words = [f"{c} {s}" for c in colors for s in SHAPES]
    weights = [1 / (i + 1) for i in range(len(words))]
    shards = []
    for s in range(num_shards):
        captions = [f"a {rng.choices(words, weights)[0]} on a {rng.choice(colors)} background"
                    for _ in range(per_shard)]
        if s % 2:
            path = directory / f"pool-{s:03d}.jsonl"
            path.write_text("".join(json.dumps({"key": f"k{i}", "caption": c}) + "\n"
                                    for i, c in enumerate(captions)))
        else:
            path = directory / f"pool-{s:03d}.txt"
            path.write_text("\n".join(captions) + "\n")
        shards.append(str(path))
    return shards


@pytest.fixture(scope="module")
def ray_session():
    """A local one-CPU Ray instance for the module (started by the caller, so the passes must keep it)."""
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a local test instance needs no token file in $HOME
    last = None
    for attempt in range(3):  # a loaded machine can miss Ray's start-up deadlines; try again
        try:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
            break
        except Exception as e:  # noqa: BLE001 - any start-up failure is retried, then re-raised
            last = e
            if ray.is_initialized():
                ray.shutdown()
            time.sleep(2 * (attempt + 1))
    else:
        raise RuntimeError(f"could not start a local Ray instance after 3 tries: {last}") from last
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def test_count_and_balance_passes_on_ray_equal_the_local_process_pool(tmp_path, ray_session):
    meta = quiet_metadata(list(COLORS) + list(SHAPES) + ["red circle", "never seen"])
    shards = write_pool(tmp_path)
    local = count_pool(shards, meta)
    on_ray = count_pool(shards, meta, executor="ray")
    assert on_ray.counts == local.counts and on_ray.shards == local.shards
    assert on_ray.totals == local.totals and local.totals["texts"] == 600
    # the caller's session is not shut down by the pass
    assert ray_session.is_initialized()

    summary = balance_pool(shards, meta, local, threshold=40, seed=3, output_dir=tmp_path / "local")
    ray_summary = balance_pool(shards, meta, on_ray, threshold=40, seed=3, output_dir=tmp_path / "ray",
                               executor="ray")
    assert 0 < summary["totals"]["kept"] < 600
    assert ray_summary["entries"] == summary["entries"] and ray_summary["totals"] == summary["totals"]
    for s in shards:
        with open(curated_list_path(tmp_path / "local", s), encoding="utf-8") as f:
            expected = f.read()
        with open(curated_list_path(tmp_path / "ray", s), encoding="utf-8") as f:
            assert f.read() == expected
    # another seed draws differently on Ray too (the seed reaches the tasks)
    other = balance_pool(shards, meta, on_ray, threshold=40, seed=4, output_dir=tmp_path / "other",
                         executor="ray")
    assert other["entries"] != summary["entries"]


def test_a_bad_shard_in_a_ray_task_raises_the_shard_error_or_is_counted_when_skipping(tmp_path, ray_session):
    meta = quiet_metadata(["cat"])
    good = tmp_path / "good.txt"
    good.write_text("a cat\n")
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(ShardError, match="missing.txt: no such file"):
        count_pool([str(good), missing], meta, executor="ray")
    pool = count_pool([str(good), missing], meta, executor="ray", skip_bad_shards=True)
    assert pool.totals["shards_failed"] == 1 and pool.counts == [1]


def write_tar(path, captions):
    with tarfile.open(path, "w") as tar:
        for i, caption in enumerate(captions):
            data = caption.encode()
            info = tarfile.TarInfo(f"{i:06d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cli_with_executor_ray_writes_what_the_process_executor_writes(tmp_path, ray_session, capsys):
    from tools.metaclip_curate import main

    shards = write_pool(tmp_path, num_shards=2, per_shard=100, seed=1)
    write_tar(tmp_path / "pool-tar.tar", ["a red circle", "a blue square", "a red square"])
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(list(COLORS) + list(SHAPES)))
    outputs = {}
    for executor in ("process", "ray"):
        out = tmp_path / executor
        common = ["--metadata", str(metadata), "--shards", *shards, str(tmp_path / "*.tar"),
                  "--output-dir", str(out), "--executor", executor]
        counted = main(["count", *common])
        assert counted["totals"]["texts"] == 203
        main(["balance", *common, "--threshold", "10", "--seed", "0"])
        summary = json.loads((out / "summary.json").read_text())
        curated = {name: (out / "curated" / name).read_text() for name in sorted(os.listdir(out / "curated"))}
        outputs[executor] = (json.loads((out / "counts.json").read_text())["entry_counts"],
                             summary["entries"], summary["totals"], curated)
    assert outputs["ray"] == outputs["process"]
    assert ray_session.is_initialized()


def test_asking_for_ray_without_ray_installed_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from tools.metaclip_curate import main

    shards = write_pool(tmp_path, num_shards=1, per_shard=5)
    meta = quiet_metadata(["red"])
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r"executor='ray' needs the ray package.*executor='process'"):
        count_pool(shards, meta, executor="ray")
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps(["red"]))
    with pytest.raises(SystemExit) as exc:
        main(["count", "--metadata", str(metadata), "--shards", *shards, "--output-dir", str(tmp_path / "o"),
              "--executor", "ray"])
    assert exc.value.code == 2 and "needs the ray package" in capsys.readouterr().err


class FakeRay:
    """Records how the passes drive Ray's session API (the calls a real cluster would get)."""

    def __init__(self, initialized: bool):
        self.initialized, self.calls = initialized, []

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        self.initialized = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.initialized = False

    def put(self, value):
        return value

    def remote(self, **options):
        self.calls.append(("remote", options))

        class Task:
            @staticmethod
            def remote(fn, shard):
                return fn(shard)
        return lambda fn: Task

    def get(self, refs):
        return list(refs)


def test_ray_address_joins_that_cluster_and_never_shuts_it_down_a_local_instance_is_stopped(monkeypatch):
    shards = ["a", "b", "c"]
    joined = FakeRay(initialized=False)
    monkeypatch.setitem(sys.modules, "ray", joined)
    assert map_shards(str.upper, shards, executor="ray", ray_address="auto") == ["A", "B", "C"]
    assert joined.calls == [("init", {"address": "auto"}), ("remote", {"num_cpus": 1})]
    local = FakeRay(initialized=False)
    monkeypatch.setitem(sys.modules, "ray", local)
    assert map_shards(str.upper, shards, executor="ray") == ["A", "B", "C"]
    assert [c[0] for c in local.calls] == ["init", "remote", "shutdown"]
    assert "address" not in local.calls[0][1]
    running = FakeRay(initialized=True)
    monkeypatch.setitem(sys.modules, "ray", running)
    map_shards(str.upper, shards, executor="ray", ray_address="auto")
    assert running.calls == [("remote", {"num_cpus": 1})]


def test_a_callable_executor_maps_the_same_functions_and_bad_executors_are_refused(tmp_path):
    meta = quiet_metadata(list(COLORS) + list(SHAPES))
    shards = write_pool(tmp_path, num_shards=2, per_shard=50)
    calls = []

    def serial(fn, items):
        calls.append(list(items))
        return [fn(s) for s in items]

    assert count_pool(shards, meta, executor=serial).counts == count_pool(shards, meta).counts
    assert calls == [shards]
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        count_pool(shards, meta, executor="dask")
    with pytest.raises(ValueError, match="only used with executor='ray'"):
        count_pool(shards, meta, ray_address="auto")
    with pytest.raises(ValueError, match="returned 1 results for 2 shards"):
        count_pool(shards, meta, executor=lambda fn, items: [fn(items[0])])

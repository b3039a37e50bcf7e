"""Artifact cache: stable keys, tree hashes, produce-once, no half artifacts, concurrent producers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from harness.cache import ArtifactCache, cache_key, hash_tree

REPO = Path(__file__).resolve().parents[1]


class Opts(BaseModel):
    epochs: int = 3
    lr: float = 0.1


def test_key_is_canonical() -> None:
    assert cache_key(a=1, b={"x": [1, 2], "y": "z"}) == cache_key(b={"y": "z", "x": [1, 2]}, a=1)
    assert cache_key(a=1) != cache_key(a=2) and cache_key(a=1) != cache_key(b=1)
    assert cache_key(levels=(0.7, 0.8)) == cache_key(levels=[0.7, 0.8])
    assert cache_key(o=Opts()) == cache_key(o={"epochs": 3, "lr": 0.1})  # defaults count
    assert cache_key(o=Opts(epochs=4)) != cache_key(o=Opts())
    assert cache_key(p=Path("a/b"), s={3, 1, 2}) == cache_key(p="a/b", s=[1, 2, 3])
    assert cache_key(n=np.int64(5), f=np.float32(0.5)) == cache_key(n=5, f=0.5)
    w = np.arange(6, dtype=np.int8).reshape(2, 3)
    assert cache_key(w=w) == cache_key(w=w.copy()) != cache_key(w=w.reshape(3, 2))
    assert len(cache_key()) == 64 and ArtifactCache(Path("x")).key(a=1) == cache_key(a=1)
    with pytest.raises(TypeError):
        cache_key(x=object())
    with pytest.raises(ValueError):
        cache_key(x=float("nan"))


def _tree(root: Path) -> Path:
    (root / "core" / "__pycache__").mkdir(parents=True)
    (root / ".pio").mkdir()
    (root / "core" / "a.c").write_text("int a;\n")
    (root / "core" / "a.h").write_text("extern int a;\n")
    (root / "README.md").write_text("notes\n")
    return root


def test_hash_tree(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "fw")
    suffixes = (".c", ".h")
    before = hash_tree([tree], suffixes)
    assert hash_tree([tree], suffixes) == before
    # location does not matter, names and contents do
    shutil.copytree(tree, tmp_path / "elsewhere" / "fw")
    assert hash_tree([tmp_path / "elsewhere" / "fw"], suffixes) == before
    # ignored: other suffixes, __pycache__, hidden folders
    (tree / "README.md").write_text("changed\n")
    (tree / "core" / "__pycache__" / "x.c").write_text("junk")
    (tree / ".pio" / "build.c").write_text("junk")
    assert hash_tree([tree], suffixes) == before
    assert hash_tree([tree], None) != before
    (tree / "core" / "a.c").write_text("int a = 1;\n")
    changed = hash_tree([tree], suffixes)
    assert changed != before
    (tree / "core" / "b.c").write_text("")
    assert hash_tree([tree], suffixes) != changed
    (tree / "core" / "b.c").rename(tree / "core" / "c.c")  # a rename changes the hash too
    assert hash_tree([tree], suffixes) not in (before, changed)
    # a single file is always included; order of the paths matters (they are separate parts)
    ini = tmp_path / "platformio.ini"
    ini.write_text("[env]\n")
    ini_hash = hash_tree([ini], (".c",))
    assert ini_hash == hash_tree([ini], None)
    ini.write_text("[env]\nboard = x\n")
    assert hash_tree([ini], (".c",)) != ini_hash
    assert hash_tree([tree, ini], suffixes) != hash_tree([ini, tree], suffixes)
    with pytest.raises(FileNotFoundError):
        hash_tree([tmp_path / "nope"], suffixes)


def test_produce_runs_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    calls: list[Path] = []

    def produce(folder: Path) -> None:
        calls.append(folder)
        assert folder.is_dir() and not any(folder.iterdir())
        (folder / "model.bin").write_bytes(b"\x01\x02")

    key = cache.key(stage="train", seed=0)
    assert not cache.exists("train", key)
    first = cache.get_or_create("train", key, produce)
    assert first == tmp_path / "cache" / "train" / key
    assert (first / "model.bin").read_bytes() == b"\x01\x02"
    assert cache.exists("train", key)
    assert calls[0] != first  # produced elsewhere, then moved into place
    second = ArtifactCache(tmp_path / "cache").get_or_create("train", key, produce)
    assert second == first and len(calls) == 1


def test_exception_leaves_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"\x00" * 100)
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="training diverged"):
        cache.get_or_create("train", "k1", broken)
    assert not cache.exists("train", "k1")
    assert not [p for p in (tmp_path / "train").iterdir() if not p.name.endswith(".lock")]
    # the next attempt produces normally
    path = cache.get_or_create("train", "k1", lambda f: (f / "ok").write_text("1"))
    assert (path / "ok").read_text() == "1"


def test_killed_producer_leaves_no_artifact(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from harness.cache import ArtifactCache\n"
        "def produce(folder):\n"
        "    (folder / 'half').write_text('x')\n"
        "    os._exit(7)\n"
        "ArtifactCache(Path(sys.argv[1])).get_or_create('build', 'k2', produce)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO)
    assert result.returncode == 7
    cache = ArtifactCache(tmp_path)
    assert not cache.exists("build", "k2") and not (tmp_path / "build" / "k2").exists()
    leftovers = [p for p in (tmp_path / "build").iterdir() if p.name.startswith(".k2.tmp-")]
    assert leftovers  # the dead producer's temporary folder
    cache.get_or_create("build", "k2", lambda f: (f / "full").write_text("y"))
    assert not [p for p in (tmp_path / "build").iterdir() if p.name.startswith(".k2.tmp-")]
    assert (tmp_path / "build" / "k2" / "full").exists()


def test_concurrent_producers_produce_once(tmp_path: Path) -> None:
    counter = tmp_path / "calls.txt"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from harness.cache import ArtifactCache\n"
        "def produce(folder):\n"
        "    with open(sys.argv[2], 'a') as f: f.write('x')\n"
        "    time.sleep(0.5)  # let the other process reach the lock meanwhile\n"
        "    (folder / 'out').write_text('done')\n"
        "p = ArtifactCache(Path(sys.argv[1])).get_or_create('build', 'shared', produce)\n"
        "assert (p / 'out').read_text() == 'done'\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache"), str(counter)], cwd=REPO)
        for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert counter.read_text() == "x"


def test_refresh_reproduces_once_per_cache_object(tmp_path: Path) -> None:
    calls = []

    def produce(folder: Path) -> None:
        calls.append(1)
        (folder / "n").write_text(str(len(calls)))

    ArtifactCache(tmp_path).get_or_create("train", "k", produce)
    cache = ArtifactCache(tmp_path)
    path = cache.get_or_create("train", "k", produce, refresh=True)
    assert (path / "n").read_text() == "2"
    cache.get_or_create("train", "k", produce, refresh=True)  # already refreshed in this run
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [".k.lock", "k"]


def test_names_are_checked(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    for stage, key in (("../x", "k"), ("train", "a/b"), ("train", ".hidden"), ("train", "a.b")):
        with pytest.raises(ValueError):
            cache.get_or_create(stage, key, lambda f: None)


def test_folder_without_marker_is_not_an_artifact(tmp_path: Path) -> None:
    stray = tmp_path / "train" / "k"
    stray.mkdir(parents=True)
    (stray / "partial").write_text("copied by hand")
    cache = ArtifactCache(tmp_path)
    assert not cache.exists("train", "k")
    path = cache.get_or_create("train", "k", lambda f: (f / "real").write_text("1"))
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == ["real"]

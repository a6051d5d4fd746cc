"""The directory a bundle is opened into (``seal.staging.Staging``): every member lands where
its name says, whatever order the members come in, and never outside the directory, even when
a directory the opening has already used is swapped for a symlink behind its back."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tfwb_agent.seal.staging import Staging

NAMES = ["run/files/a.txt", "run/run-x.wandb", "run/files/media/images/b.png", "top.json",
         "run/files/c.txt", "other/d.txt", "run/files/media/images/e.png", "run/f.txt"]


def test_members_land_where_their_names_say_in_any_order(tmp_path: Path) -> None:
    st = Staging(tmp_path / "root", durable=False)
    for i, name in enumerate(NAMES):
        with st.create(name) as f:
            f.write(f"{i}:{name}".encode())
    final = st.commit("b1")
    got = {str(p.relative_to(final)): p.read_text() for p in final.rglob("*") if p.is_file()}
    assert got == {name: f"{i}:{name}" for i, name in enumerate(NAMES)}
    assert not list((tmp_path / "root").glob(".tmp-*"))


def test_a_member_twice_is_refused(tmp_path: Path) -> None:
    st = Staging(tmp_path / "root", durable=False)
    st.create("run/files/a.txt").close()
    with pytest.raises(FileExistsError):
        st.create("run/files/a.txt")
    st.discard()
    assert not any((tmp_path / "root").iterdir())


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    st = Staging(tmp_path / "root", durable=False)
    st.create("run/files/a.txt").close()
    st.create("other/b.txt").close()  # the open directory is now other/
    # Someone swaps run/files for a symlink out of the directory between two members.
    os.rename(st.path / "run" / "files", st.path / "run" / "files-moved")
    os.symlink(outside, st.path / "run" / "files")
    with pytest.raises(OSError):
        st.create("run/files/c.txt")
    st.create("run/files-moved/c.txt").close()  # the directory itself is still usable
    assert list(outside.iterdir()) == []
    st.discard()
    assert outside.is_dir() and list(outside.iterdir()) == []


def test_the_directory_in_use_swapped_for_a_symlink_still_takes_its_files_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    st = Staging(tmp_path / "root", durable=False)
    st.create("run/files/a.txt").close()
    os.rename(st.path / "run" / "files", st.path / "run" / "files-moved")
    os.symlink(outside, st.path / "run" / "files")
    st.create("run/files/b.txt").close()  # the open directory, not the path: inside still
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (st.path / "run" / "files-moved").iterdir()) == ["a.txt", "b.txt"]
    st.discard()

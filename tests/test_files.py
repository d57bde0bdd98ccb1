"""atomic_write and publish_folder: the old file (or folder) or the new one, never half, never someone else's."""

import os

import pytest

from illustrated_sd.trace.files import (atomic_write, check_folder_name, check_output_folder, check_writable_folder, publish_folder,
                                  scratch_folder_beside)


def test_atomic_write_replaces_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "log.json"
    with atomic_write(path) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half of the sec")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["log.json"]


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_write(tmp_path / "private") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600


def test_a_folder_under_parents_that_do_not_exist_yet_is_made(tmp_path):
    out = tmp_path / "models" / "new" / "out"
    staged = scratch_folder_beside(out)
    (staged / "a.txt").write_text("x")
    publish_folder(staged, out)
    assert (out / "a.txt").read_text() == "x" and [p.name for p in out.parent.iterdir()] == ["out"]


def test_publish_folder_swaps_whole_folders_and_puts_the_old_one_back_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("old")
    staged = scratch_folder_beside(out)
    (staged / "report.html").write_text("new")
    publish_folder(staged, out)
    assert (out / "report.html").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    staged = scratch_folder_beside(out)
    (staged / "report.html").write_text("newer")
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(5, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError):
        publish_folder(staged, out)
    monkeypatch.undo()
    assert (out / "report.html").read_text() == "new"  # the previous outputs, back in place


def test_output_folders_holding_other_files_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="did not write \\(notes.txt\\)"):
        check_output_folder(tmp_path, lambda name: name == "report.html")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "notes.txt")


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real" / "log.json"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "log.json"
    link.symlink_to(target)
    with atomic_write(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and link.resolve() == target and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["log.json", "log.json", "real"]  # no temporary left anywhere
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="broken symbolic link"):
        with atomic_write(tmp_path / "dangling"):
            pass


@pytest.mark.parametrize("name, message", [("", "--out is empty"), ("  ", "--out is empty"), ("/", "root of the file system")])
def test_folder_names_that_mean_here_or_everywhere_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        check_folder_name(name)


def test_an_output_folder_behind_a_link_is_its_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert check_output_folder(tmp_path / "link", lambda name: True) == tmp_path / "real"
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match="broken symbolic link"):
        check_output_folder(tmp_path / "broken", lambda name: True)

"""Atomic writes: a failure mid-write leaves the previous file and no temporary file."""

import pytest

from resnets.atomic import atomic_open, write_json, write_text


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "table.md", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as file:
            file.write("half of the new")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_write_json_replaces_the_file(tmp_path):
    path = write_json(tmp_path / "deep" / "summary.json", {"a": 1})
    write_json(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'


def test_writable_folder_creates_it_or_names_the_cause(tmp_path):
    from resnets.atomic import writable_folder
    from resnets.errors import UserError

    assert writable_folder(tmp_path / "new" / "deeper").is_dir()
    assert [p.name for p in (tmp_path / "new" / "deeper").iterdir()] == []  # the probe leaves nothing
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"cannot write in .*file/sub \(.*file is a file, not a folder\)"):
        writable_folder(tmp_path / "file" / "sub")

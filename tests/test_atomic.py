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


def test_a_file_where_a_folder_should_be_is_one_user_error_naming_both(tmp_path):
    from resnets.atomic import WriteError
    from resnets.errors import UserError

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError) as raised:
        write_json(tmp_path / "file" / "deep" / "summary.json", {"a": 1})
    assert str(raised.value) == (f"cannot write {tmp_path / 'file' / 'deep' / 'summary.json'} "
                                 f"({tmp_path / 'file'} is a file, not a folder)")
    assert isinstance(raised.value, WriteError) and isinstance(raised.value, OSError)


@pytest.mark.parametrize("number, words", [(13, "Permission denied"), (30, "Read-only file system")])
def test_a_read_only_folder_is_one_user_error_with_the_cause(tmp_path, read_only, number, words):
    from resnets.errors import UserError

    read_only(tmp_path, number)
    with pytest.raises(UserError, match=rf"^cannot write {tmp_path / 'table.md'} \({words}\)$") as raised:
        write_text(tmp_path / "table.md", "new\n")
    assert raised.value.errno == number  # still an OSError for code that handles one
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_mid_write_keeps_the_old_file_and_its_errno(tmp_path):
    import errno

    from resnets.atomic import WriteError

    path = write_text(tmp_path / "table.md", "old\n")
    with pytest.raises(WriteError, match=r"\(No space left on device\)$") as raised:
        with atomic_open(path, "w") as file:
            file.write("half")
            raise OSError(errno.ENOSPC, "No space left on device")  # what file.write raises
    assert raised.value.errno == errno.ENOSPC
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_an_oserror_about_another_file_in_the_block_passes_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_open(tmp_path / "out.bin") as file:
            file.write((tmp_path / "missing-input").read_bytes())
    assert list(tmp_path.iterdir()) == []

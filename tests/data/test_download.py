import hashlib
import http.server
import socket
import threading

import pytest

from resnets.cli import main
from resnets.data import download, load
from resnets.errors import UserError


@pytest.fixture
def server(cifar10):
    """An http.server on 127.0.0.1 serving /good (the archive) and /drop (half, then hang up)."""
    payload = cifar10["archive"].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/garbage":
                self.send_response(200)
                self.send_header("Content-Length", "12")
                self.end_headers()
                self.wfile.write(b"not a tar.gz")
                return
            if self.path not in ("/good", "/drop"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.path == "/good":
                self.wfile.write(payload)
            else:
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True  # the connection drops midway

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "md5": hashlib.md5(payload).hexdigest(),
           "cifar": cifar10}
    httpd.shutdown()
    httpd.server_close()


def test_good_archive_is_checked_renamed_and_extracted(server, tmp_path):
    to = tmp_path / "data"
    folder = download("cifar10", to, url=server["url"] + "/good", md5=server["md5"])
    assert folder == to / "cifar-10-batches-py" and (folder / "data_batch_5").is_file()
    assert sorted(p.name for p in to.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    test = load("cifar10", "test", root=str(to))
    assert test.labels.tolist() == server["cifar"]["test"][1]
    # a second call finds both steps done
    assert download("cifar10", to, url=server["url"] + "/missing", md5=server["md5"]) == folder


def test_wrong_md5_leaves_nothing(server, tmp_path):
    to = tmp_path / "data"
    with pytest.raises(UserError, match=r"/good has MD5 [0-9a-f]{32}, expected c58f30108f718f92721af3b95e74349a"):
        download("cifar10", to, url=server["url"] + "/good")  # the official MD5: our tiny archive fails it
    assert list(to.iterdir()) == []


def test_dropped_connection_leaves_nothing_and_a_retry_starts_clean(server, tmp_path):
    to = tmp_path / "data"
    with pytest.raises(UserError, match="/drop"):
        download("cifar10", to, url=server["url"] + "/drop", md5=server["md5"])
    assert list(to.iterdir()) == []
    dead = 2 ** 22 + 1  # above Linux's default pid_max: no such process
    (to / f".cifar-10-python.tar.gz.tmp-{dead}").write_bytes(b"stale bytes from a killed run")
    folder = download("cifar10", to, url=server["url"] + "/good", md5=server["md5"])
    assert folder.is_dir()
    assert sorted(p.name for p in to.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    archive = (to / "cifar-10-python.tar.gz").read_bytes()
    assert hashlib.md5(archive).hexdigest() == server["md5"]


def test_http_error_and_unknown_name(server, tmp_path):
    to = tmp_path / "data"
    with pytest.raises(UserError, match="404"):
        download("cifar100", to, url=server["url"] + "/nothing-here")
    assert list(to.iterdir()) == []
    with pytest.raises(UserError, match="'mnist'.*cifar10, cifar100"):
        download("mnist", tmp_path)


def test_cli_download_reports_one_line(server, tmp_path, capsys):
    to = tmp_path / "data"
    assert main(["download", "cifar10", "--to", str(to), "--url", server["url"] + "/drop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: download of") and err.count("\n") == 1
    assert list(to.iterdir()) == []


def test_archive_that_will_not_extract_is_named_and_leaves_no_folder(server, tmp_path):
    to = tmp_path / "data"
    md5 = hashlib.md5(b"not a tar.gz").hexdigest()
    with pytest.raises(UserError, match=r"cannot extract .*cifar-100-python.tar.gz"):
        download("cifar100", to, url=server["url"] + "/garbage", md5=md5)
    assert [p.name for p in to.iterdir()] == ["cifar-100-python.tar.gz"]  # checked archive kept, no folder


def test_download_below_a_file_is_one_line_naming_the_folder_and_cause(server, tmp_path, one_error_line):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    to = blocker / "data"
    assert main(["download", "cifar10", "--to", str(to), "--url", server["url"] + "/good"]) == 2
    err = one_error_line()
    assert f"cannot write in {to} ({blocker} is a file, not a folder)" in err
    assert blocker.read_text() == "not a folder"


def test_download_into_a_read_only_folder_fails_before_fetching(server, tmp_path, monkeypatch, refuse_writes_in,
                                                                one_error_line):
    import errno
    import urllib.request

    to = tmp_path / "locked"
    to.mkdir()
    to.chmod(0o555)  # stops a normal user; tests may run as root, so refuse the write as well
    refuse_writes_in(to, errno.EROFS)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("fetched before the check"))
    try:
        assert main(["download", "cifar10", "--to", str(to), "--url", server["url"] + "/good"]) == 2
        assert f"cannot write in {to} (Read-only file system)" in one_error_line()
        assert list(to.iterdir()) == []
    finally:
        to.chmod(0o755)


def test_a_write_failure_midway_is_one_line_and_leaves_nothing(server, tmp_path, monkeypatch, one_error_line):
    import errno
    import os

    import importlib

    download_module = importlib.import_module("resnets.data.download")  # the name `download` is the function
    real = download_module.atomic_open

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_disk(path, mode="wb"):
        from contextlib import contextmanager

        @contextmanager
        def opened():
            with real(path, mode) as file:
                yield FullDisk(file)

        return opened()

    monkeypatch.setattr(download_module, "atomic_open", full_disk)
    to = tmp_path / "data"
    assert main(["download", "cifar10", "--to", str(to), "--url", server["url"] + "/good"]) == 2
    err = one_error_line()
    assert f"cannot write {to / 'cifar-10-python.tar.gz'} (No space left on device)" in err
    assert list(to.iterdir()) == []


def test_no_network_says_where_to_put_the_archive(tmp_path, one_error_line):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/cifar-10-python.tar.gz"
    assert main(["download", "cifar10", "--to", str(tmp_path), "--url", url]) == 2
    err = one_error_line()
    assert f"cannot reach {url} (" in err
    assert err.endswith(f"put it at {tmp_path / 'cifar-10-python.tar.gz'} (its MD5 is checked)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_bad_url_is_one_line(tmp_path, one_error_line):
    assert main(["download", "cifar10", "--to", str(tmp_path), "--url", "nonsense"]) == 2
    assert "cannot download 'nonsense' (unknown url type: 'nonsense'): expected an http:// or https:// URL" \
        in one_error_line()

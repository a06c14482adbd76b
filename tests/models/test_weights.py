"""Pretrained weights: torchvision's table, the download through torch.hub (against a server on
127.0.0.1), the cache, the failures that leave nothing behind, and strict loading."""

import dataclasses
import hashlib
import http.server
import io
import os
import re
import socket
import threading
import time

import pytest
import torch

import resnets
from resnets.cli import main
from resnets.errors import UserError
from resnets.models import imagenet_classes, imagenet_wnids, list_models
from resnets.models import weights as weights_module
from resnets.models.summary import count_parameters
from resnets.models.hub import cache_folder, fetch_state_dict
from resnets.models.weights import (load_body, load_pretrained, release, releases,
                                    transform)
from resnets.models.zoo import describe
from test_torchvision_layout import torchvision_layout

UNITS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
         "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True),
         "resnet152": ((3, 8, 36, 3), True)}


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    """A hub cache of the test's own ($TORCH_HOME/hub/checkpoints), empty at first."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home" / "hub" / "checkpoints"


# ------------------------------------------------------------------------------ the table
def test_each_release_matches_our_model_and_names_its_hash_in_its_file_name():
    hash_regex = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: what check_hash compares
    seen = set()
    for entry in releases():
        with torch.device("meta"):
            model = resnets.create_model(entry.model, bottleneck_stride="3x3")
        assert count_parameters(model) == entry.num_params, entry
        assert hash_regex.search(entry.file_name).group(1) == entry.sha256
        assert len(entry.sha256) == 8 and entry.url.startswith("https://download.pytorch.org/models/")
        assert entry.crop_size == 224 and entry.resize_size == (256 if entry.version == "v1" else 232)
        assert 60 < entry.acc1 < entry.acc5 < 100
        seen.add((entry.model, entry.version, entry.torchvision_name))
    assert seen == {(m, "v1", "IMAGENET1K_V1") for m in UNITS} | {
        (m, "v2", "IMAGENET1K_V2") for m in ("resnet50", "resnet101", "resnet152")}
    assert release("resnet50").acc1 == 76.130 and release("resnet50").acc5 == 92.862
    assert release("resnet50", "v2").file_name == "resnet50-11ad3fa6.pth"
    assert transform() == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "interpolation": "bilinear"}


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == len(set(names)) == 1000
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet tissue"
    assert (weights_module.TABLE.parent / "imagenet_classes.txt").is_file()


def test_unknown_releases_and_models_are_one_line():
    with pytest.raises(UserError, match=r"torchvision:v2: torchvision has no such release of "
                                        r"resnet18 weights; it has torchvision:v1"):
        release("resnet18", "v2")
    for name in ("plain50", "preact_resnet50", "resnet56", "imagenet_resnet"):
        with pytest.raises(UserError, match=f"torchvision publishes ImageNet weights for resnet18, "
                                            f"resnet34, resnet50, resnet101, resnet152, not '{name}'"):
            resnets.create_model(name, weights="torchvision")


# ----------------------------------------------------------------- a server on 127.0.0.1
@pytest.fixture(scope="module")
def payload():
    """A resnet18 state dict, from our own model (torchvision's layout), as torch.save bytes,
    and the file name torchvision would give it (its SHA-256 prefix after the dash)."""
    torch.manual_seed(0)
    state = resnets.create_model("resnet18").state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return {"state": state, "bytes": data,
            "name": f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"}


@pytest.fixture
def server(payload):
    """/good/NAME serves the file, /drop/NAME half of it then hangs up; requests are counted."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            mode = self.path.split("/")[1]
            if mode not in ("good", "drop"):
                self.send_error(404)
                return
            data = payload["bytes"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == "good":
                self.wfile.write(data)
            else:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True  # the connection drops midway

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # a client that hung up mid-file (the interrupted downloads): nothing to report

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    info = {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "hits": hits, "httpd": httpd}
    yield info
    httpd.shutdown()
    httpd.server_close()


def served(server, payload, mode="good", name=None):
    """torchvision's resnet18 release, moved to the test server."""
    name = name or payload["name"]
    return dataclasses.replace(release("resnet18"), url=f"{server['url']}/{mode}/{name}",
                               sha256=name.split("-")[1].split(".")[0])


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_first_call_downloads_into_the_cache_the_second_needs_no_server(server, payload,
                                                                        torch_home, capsys):
    entry = served(server, payload)
    state = fetch_state_dict(entry)
    assert server["hits"] == [f"/good/{payload['name']}"]
    assert cache_folder() == torch_home and files_in(torch_home) == [payload["name"]]
    assert state.keys() == payload["state"].keys()
    assert all(torch.equal(state[k], payload["state"][k]) for k in state)
    out, err = capsys.readouterr()
    assert out == ""  # stdout stays the command's own
    assert err == f"downloaded {entry.url} to {torch_home / payload['name']}\n"
    server["httpd"].shutdown()  # no server any more: the cache answers
    again = fetch_state_dict(entry)
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert len(server["hits"]) == 1


def test_a_wrong_hash_leaves_no_file(server, payload, torch_home):
    wrong = payload["name"].replace(payload["name"][9:17], "0123abcd")
    with pytest.raises(UserError) as error:
        fetch_state_dict(served(server, payload, name=wrong))
    message = str(error.value)
    assert f"does not match its hash (its SHA-256 starts with {payload['name'][9:17]}, expected " \
           f"0123abcd)" in message and "nothing was kept" in message and "\n" not in message
    assert files_in(torch_home) == []


def test_a_connection_dropped_midway_leaves_no_file(server, payload, torch_home):
    with pytest.raises(UserError, match="cut short or altered on the way; nothing was kept"):
        fetch_state_dict(served(server, payload, mode="drop"))
    assert files_in(torch_home) == []
    fetch_state_dict(served(server, payload))  # a retry starts clean
    assert files_in(torch_home) == [payload["name"]]


def test_a_download_interrupted_by_ctrl_c_leaves_no_file(server, payload, torch_home, monkeypatch):
    real_urlopen = torch.hub.urlopen

    def urlopen_then_ctrl_c(*args, **kwargs):
        response = real_urlopen(*args, **kwargs)
        real_read, calls = response.read, []

        def read(*a):
            calls.append(1)
            if len(calls) == 2:  # a chunk is written, the next never comes
                raise KeyboardInterrupt
            return real_read(*a)

        response.read = read
        return response

    monkeypatch.setattr(torch.hub, "urlopen", urlopen_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        fetch_state_dict(served(server, payload))
    assert files_in(torch_home) == []


def test_offline_without_the_file_says_which_file_to_put_where(payload, torch_home, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = dataclasses.replace(release("resnet18"), url=f"http://127.0.0.1:{port}/resnet18-f37072fd.pth")
    with pytest.raises(UserError) as error:
        fetch_state_dict(entry)
    message = str(error.value)
    assert message.startswith("cannot download torchvision's resnet18 IMAGENET1K_V1 weights (")
    assert message.endswith(f"and they are not in the cache: put the file resnet18-f37072fd.pth "
                            f"(from {entry.url}) at {torch_home / 'resnet18-f37072fd.pth'}")
    assert "\n" not in message and files_in(torch_home) == []
    assert capsys.readouterr().err == ""  # nothing before the error's line


def test_an_http_error_is_one_line(server, payload, torch_home):
    entry = dataclasses.replace(served(server, payload), url=f"{server['url']}/missing/{payload['name']}")
    with pytest.raises(UserError, match=r"\(HTTP 404 .*put the file"):
        fetch_state_dict(entry)
    assert files_in(torch_home) == []


def test_a_killed_downloads_temporary_file_is_removed(server, payload, torch_home):
    torch_home.mkdir(parents=True)
    stale = torch_home / f"{payload['name']}.{'a' * 32}.partial"
    fresh = torch_home / f"{payload['name']}.{'b' * 32}.partial"  # maybe another process's, live
    for path in (stale, fresh):
        path.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fetch_state_dict(served(server, payload))
    assert files_in(torch_home) == sorted([payload["name"], fresh.name])


def test_a_cached_file_that_cannot_be_read_says_to_delete_it(torch_home):
    torch_home.mkdir(parents=True)
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"resnet18-f37072fd.pth is not the file its name "
                                        r"promises.*; delete it and it will be downloaded again"):
        fetch_state_dict(release("resnet18"))


def test_a_file_torchvision_already_downloaded_is_used(payload, torch_home, published):
    torch_home.mkdir(parents=True)
    name = published("resnet18", payload["bytes"])
    (torch_home / name).write_bytes(payload["bytes"])  # as torchvision left it
    model = resnets.create_model("resnet18", weights="torchvision")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in payload["state"].items())
    assert model.fc.out_features == 1000


def test_a_wrong_file_under_a_releases_name_in_the_cache_is_refused_naming_it(payload,
                                                                             torch_home, capsys):
    """A well-formed state dict put in the hub cache under torchvision's resnet18 name is not
    torchvision's: the hash in the name is checked on first use, not only on download."""
    torch_home.mkdir(parents=True)
    wrong = torch_home / "resnet18-f37072fd.pth"
    wrong.write_bytes(payload["bytes"])
    assert main(["predict", "--model", "resnet18", "--weights", "torchvision", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {wrong} is not the file its name "
                                                   f"promises: its SHA-256 starts with "
                                                   f"{payload['name'][9:17]}, the name says f37072fd")
    assert files_in(torch_home) == [wrong.name]  # nothing written, nothing deleted


def test_a_file_passed_by_path_under_a_releases_name_is_checked_against_that_hash(
        payload, torch_home, published, tmp_path, capsys):
    """Named like torchvision's resnet18 release, a file given by path is taken for it only if
    its content is that release's; otherwise one line says how to use it as one's own."""
    mine = tmp_path / "mine"
    mine.mkdir()
    wrong = mine / "resnet18-f37072fd.pth"
    wrong.write_bytes(payload["bytes"])
    assert main(["predict", "--model", "resnet18", "--weights", str(wrong), "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{wrong} is not the file its name promises" in err
    assert err.rstrip().endswith("rename it to load it as weights of your own, or give "
                                 "--weights torchvision for the release itself")
    renamed = mine / "resnet18-finetuned.pth"
    wrong.rename(renamed)
    model = resnets.create_model("resnet18", weights=str(renamed))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in payload["state"].items())
    right = mine / published("resnet18", payload["bytes"])  # the release's own content
    renamed.rename(right)
    model = resnets.create_model("resnet18", weights=str(right))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in payload["state"].items())


def test_a_cached_file_is_hashed_once_until_it_changes(payload, torch_home, published,
                                                      monkeypatch):
    import os

    import resnets.models.hub as hub

    torch_home.mkdir(parents=True)
    name = published("resnet18", payload["bytes"])
    (torch_home / name).write_bytes(payload["bytes"])
    reads = []
    real = hub.hashlib.sha256
    monkeypatch.setattr(hub.hashlib, "sha256", lambda *a: reads.append(1) or real(*a))
    entry = release("resnet18")
    for _ in range(3):
        fetch_state_dict(entry)
    assert len(reads) == 1  # remembered by name, size and modification time
    assert files_in(torch_home) == [name]  # the record is kept beside checkpoints/, not in it
    os.utime(torch_home / name, ns=(1, 1))  # touched (replaced, copied over): checked again
    fetch_state_dict(entry)
    assert len(reads) == 2


def test_create_model_with_weights_and_another_class_count_gets_a_new_classifier(payload, torch_home,
                                                                                 published):
    torch_home.mkdir(parents=True)
    (torch_home / published("resnet18", payload["bytes"])).write_bytes(payload["bytes"])
    torch.manual_seed(1)
    model = resnets.create_model("resnet18", weights="torchvision", num_classes=7)
    assert tuple(model.fc.weight.shape) == (7, 512)
    torch.manual_seed(1)
    fresh = resnets.create_model("resnet18", num_classes=7)
    assert torch.equal(model.fc.weight, fresh.fc.weight)  # initialised as usual
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, payload["state"][k]) for k, v in body.items())


# ------------------------------------------------------------------------ strict loading
def _torchvision_state(name, device="meta"):
    units, bottleneck = UNITS[name]
    return {key: torch.zeros(shape, device=device) for key, shape in
            torchvision_layout(units, bottleneck).items()}


@pytest.mark.parametrize("name", list(UNITS))
def test_torchvision_layout_loads_strictly_into_every_imagenet_model_of_its_name(name):
    assert name in list_models() and describe(name)["family"] == "imagenet"
    for entry in (r for r in releases() if r.model == name):
        weights = weights_module._from_release(entry, _torchvision_state(name), entry.describe(), None)
        kwargs = weights_module.architecture(name, weights, {})
        assert kwargs == ({"bottleneck_stride": "3x3"} if UNITS[name][1] else {})
        with torch.device("meta"):
            model = resnets.create_model(name, **kwargs)
        assert load_body(model, weights, name) is True  # every tensor, the classifier too


def test_older_files_without_num_batches_tracked_still_load():
    state = {k: v for k, v in _torchvision_state("resnet18", "cpu").items()
             if not k.endswith("num_batches_tracked")}
    entry = release("resnet18")
    model = resnets.create_model("resnet18")
    load_body(model, weights_module._from_release(entry, state, entry.describe(), None), "resnet18")
    assert int(model.bn1.num_batches_tracked) == 0 and float(model.conv1.weight.detach().abs().sum()) == 0


def test_a_mismatched_architecture_is_one_line():
    entry = release("resnet34")
    weights = weights_module._from_release(entry, _torchvision_state("resnet34"), entry.describe(), None)
    with torch.device("meta"):
        model = resnets.create_model("resnet18")
    with pytest.raises(UserError) as error:
        load_body(model, weights, "resnet18")
    message = str(error.value)
    assert message.startswith("torchvision's resnet34 IMAGENET1K_V1 weights: the weights are a "
                              "resnet34's, they do not fit model 'resnet18' (use resnet34, e.g. "
                              "--model resnet34; unexpected keys: layer1.2.conv1.weight")
    assert "\n" not in message


def test_the_papers_bottleneck_stride_with_torchvisions_weights_is_one_line(torch_home):
    with pytest.raises(UserError) as error:
        resnets.create_model("resnet50", weights="torchvision", bottleneck_stride="1x1")
    message = str(error.value)
    assert message == ("torchvision's resnet50 IMAGENET1K_V1 weights were trained with "
                       "bottleneck_stride='3x3' (torchvision's v1.5 placement); resnet50 with "
                       "bottleneck_stride='1x1' would load them but compute something else: leave "
                       "bottleneck_stride out")
    assert files_in(torch_home) == []  # refused before anything was fetched


def test_a_state_dict_file_loads_with_torchvisions_conventions(tmp_path, published):
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v
             for k, v in _torchvision_state("resnet50", "cpu").items()}
    for key in state:  # a variance is never below 0: such weights are refused as unusable
        if key.endswith("running_var"):
            state[key] = state[key].abs()
    path = tmp_path / "my-resnet50.pth"
    torch.save(state, path)
    weights = load_pretrained(str(path), "resnet50")
    assert weights.classes == imagenet_wnids() and weights.class_names == imagenet_classes()
    assert weights.resize_size == 256
    assert weights.model_kwargs == {"bottleneck_stride": "3x3"} and weights.fixed == ()
    model = resnets.create_model("resnet50", weights=str(path))
    assert model.layer2[0].conv2.stride == (2, 2)  # torchvision's placement, by default
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    paper = resnets.create_model("resnet50", weights=str(path), bottleneck_stride="1x1")
    assert paper.layer2[0].conv1.stride == (2, 2)  # a file of unknown origin: the user decides
    # under a release's name, with that release's content (its hash): torchvision's, so fixed
    by_hand = tmp_path / published("resnet50", path.read_bytes())
    path.rename(by_hand)
    with pytest.raises(UserError, match="were trained with bottleneck_stride='3x3'"):
        resnets.create_model("resnet50", weights=str(by_hand), bottleneck_stride="1x1")


def test_weights_that_are_not_a_file_or_not_weights_are_one_line(tmp_path):
    with pytest.raises(UserError, match=r"weights not found: nowhere.pth \(expected torchvision, "):
        resnets.create_model("resnet18", weights="nowhere.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not weights"):
        resnets.create_model("resnet18", weights=str(tmp_path / "notes.txt"))
    torch.save({"model": resnets.create_model("resnet20")}, tmp_path / "pickled.pth")
    with pytest.raises(UserError, match="refused to load: it holds code or objects other than "
                                         "plain data") as refused:
        resnets.create_model("resnet18", weights=str(tmp_path / "pickled.pth"))
    # the user's own file: nothing would download it again, so that is not said
    assert "downloaded again" not in str(refused.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="not a state dict .* but a list"):
        resnets.create_model("resnet18", weights=str(tmp_path / "list.pth"))


def test_the_weights_command_lists_releases_and_the_cache(payload, torch_home, capsys):
    torch_home.mkdir(parents=True)
    (torch_home / "resnet34-b627a593.pth").write_bytes(b"")
    assert main(["weights"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + len(releases()) + 1
    row = next(line for line in out if line.startswith("resnet50   torchvision:v2"))
    assert "IMAGENET1K_V2" in row and "80.858" in row and "95.434" in row and " 232 " in row
    assert next(line for line in out if line.startswith("resnet34")).endswith("yes")
    assert next(line for line in out if line.startswith("resnet18")).endswith("no")
    assert out[-1].endswith(f"cache: {torch_home}")


def test_the_docs_quote_torchvisions_figures_from_the_table():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "docs" / "weights.md").read_text()
    for entry in releases():
        spec = "torchvision" if entry.version == "v1" else entry.spec
        row = (f"| {entry.model} | `{spec}` | {entry.acc1:.3f} / {entry.acc5:.3f} | "
               f"{entry.resize_size} |")
        assert row in readme, row


def _layout_only(name: str) -> dict:
    """A state dict with `name`'s keys in torchvision's layout and tiny tensors (the keys and
    the classifier's size are what show the architecture)."""
    with torch.device("meta"):
        keys = list(resnets.create_model(name).state_dict())
    state = {key: torch.zeros(1, 1) for key in keys}
    state["conv1.weight"] = torch.zeros(64, 3, 7, 7)
    state["fc.weight"] = torch.zeros(1000, 1)
    return state


def test_a_torchvision_layout_file_without_model_names_the_architecture_it_holds(tmp_path,
                                                                                 capsys):
    from resnets.models.zoo import imagenet_model_of

    for name, shown in [("resnet34", "basic units 3-4-6-3"), ("resnet50", "bottleneck units 3-4-6-3"),
                        ("resnet152", "bottleneck units 3-8-36-3")]:
        assert imagenet_model_of(_layout_only(name)) == (name, f"{shown}, fc of 1,000 classes")
    assert imagenet_model_of({"conv.weight": torch.zeros(1)}) is None
    torch.save(_layout_only("resnet34"), tmp_path / "mine.pth")
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["predict", "--weights", str(tmp_path / "mine.pth"), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == (f"error: --weights {tmp_path / 'mine.pth'} (basic units "
                                       f"3-4-6-3, fc of 1,000 classes) holds a resnet34's "
                                       f"weights: add --model resnet34\n")
    with torch.device("meta"):
        model = resnets.create_model("resnet18")
    with pytest.raises(UserError) as refused:  # train --weights FILE with another --model
        load_body(model, weights_module.load_pretrained(str(tmp_path / "mine.pth"), "resnet18"),
                  "resnet18")
    assert "the weights are a resnet34's, they do not fit model 'resnet18' (use resnet34, " \
           "e.g. --model resnet34;" in str(refused.value)


def test_imagenet_wnids_are_the_1000_sorted_synsets_paired_with_the_class_names():
    # The order of torchvision's outputs is the sorted order of ImageNet's class folders.
    wnids, names = imagenet_wnids(), imagenet_classes()
    assert len(wnids) == len(set(wnids)) == len(names) == 1000
    assert wnids == sorted(wnids) and all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    pairs = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"),
             207: ("n02099601", "golden retriever"), 281: ("n02123045", "tabby"),
             504: ("n03063599", "coffee mug"), 999: ("n15075141", "toilet tissue")}
    assert all((wnids[i], names[i]) == pair for i, pair in pairs.items())

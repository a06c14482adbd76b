"""Two small trained run directories (a residual and a plain net, depth 8, a few steps on the
bundled digits), trained once per test session for the lesion and landscape commands."""

import pytest


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory):
    from resnets.cli import main

    out = tmp_path_factory.mktemp("trained")
    runs = {}
    for kind in ("resnet", "plain"):
        argv = ["train", "--model", f"cifar_{kind}", "--model-args", "depth=8", "--iters", "3",
                "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--out", str(out),
                "--name", f"{kind}8", "--progress", "none"]
        assert main(argv) == 0
        runs[kind] = out / f"{kind}8"
    return runs

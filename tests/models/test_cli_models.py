"""`resnets list` and `resnets info` from the command line."""

import subprocess
import sys

import pytest

from resnets.cli import main


def test_list_prints_names_params_and_flops(capsys):
    assert main(["list", "resnet5*"]) == 0
    out = capsys.readouterr().out
    assert "resnet56" in out and "853,018" in out and "125.49M" in out
    assert "resnet50" in out and "25,557,032" in out
    assert "resnet20 " not in out


def test_info_prints_table_1_layout(capsys):
    assert main(["info", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "[1x1, 64 | 3x3, 64 | 1x1, 256] x 3" in out
    assert "25,557,032" in out and "3.86G" in out


def test_info_with_input_size_and_json(capsys):
    assert main(["info", "resnet20", "--input-size", "1", "28", "28", "--json"]) == 0
    assert '"input_size": [\n  1,\n  28,\n  28\n ]' in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["info", "resnt56"], "unknown model 'resnt56'; closest: resnet56"),
    (["info", "resnet5"], "nearest valid depths are 8 and 14"),
    (["info", "cifar_resnet", "--depth", "21"], "nearest valid depths are 20 and 26"),
    (["list", "nothing*"], "no model matches"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_help_of_each_command_exits_0(capsys):
    result = subprocess.run([sys.executable, "-m", "resnets", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout  # `python -m resnets` works
    for argv in (["list", "--help"], ["info", "--help"]):  # in process: a start takes seconds
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_the_docs_model_table_is_what_the_code_prints(capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "docs" / "models.md").read_text()
    table = readme.split("<!-- models-table:start -->\n")[1].split("<!-- models-table:end -->")[0]
    main(["list", "--markdown", "resnet*"])
    main(["list", "--markdown", "plain*"])
    printed = capsys.readouterr().out.splitlines()
    expected = printed[: len(printed) // 2] + printed[len(printed) // 2 + 2:]
    assert table.splitlines() == expected

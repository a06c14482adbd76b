"""The command line keeps every command and option when it is reorganised."""

import json
from pathlib import Path

from cli_surface import surface
from resnets.cli import build_parser

RECORDED = Path(__file__).with_name("cli_surface.json")


def test_every_command_and_option_is_still_offered():
    recorded, now = json.loads(RECORDED.read_text()), surface(build_parser())
    assert sorted(now) == sorted(recorded), "commands added or lost"
    for command, arguments in recorded.items():
        assert now[command] == arguments, command

"""The `resnets` command: parse, call the library, print.

One module per group of commands: `training` (train, eval, predict, export, plot), `studies`
(study, diagnose, lesion, landscape), `catalog` (list, info, weights, download), `reports` (report); `types` holds
the argparse value types they share, and `main` the parser and the one place where a
`UserError` becomes one line on stderr and exit status 2 (Ctrl-C: 130, after the command's own
cleanup).
"""

from resnets.cli.main import build_parser, main

__all__ = ["build_parser", "main"]

"""`report`: a run, several runs, a study, or lesion/landscape results as one HTML page."""

from __future__ import annotations

import sys


def add_commands(sub) -> None:
    report = sub.add_parser(
        "report", help="a run, a study or several runs as one self-contained HTML page",
        description="Write one HTML page (figures inline, nothing fetched when it is viewed) "
        "of a run directory, a study directory, a lesion/landscape/diagnose output folder, or "
        "several run directories compared.")
    report.add_argument("paths", nargs="+", metavar="PATH",
                        help="a run or study directory, or several run directories")
    report.add_argument("--out", metavar="FILE", help="the page (default: report.html in the "
                        "run or study directory; in the current folder for several runs)")
    report.add_argument("--open", action="store_true", help="open it in your web browser")
    report.set_defaults(run=_cmd_report)


def _cmd_report(args) -> int:
    from resnets.report import write_page

    path = write_page(args.paths, args.out)
    print(path)
    if args.open:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def study_page_refresher():
    """What `resnets study` calls after every run (and at the end): the study's page,
    rewritten, so that a long study can be watched in a browser."""
    from resnets.report import refresh_study_page

    def refresh(study_dir) -> None:
        refresh_study_page(study_dir, log=lambda line: print(line, file=sys.stderr))

    return refresh

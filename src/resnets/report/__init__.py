"""`resnets report`: a run, several runs, a study, or a lesion/landscape/diagnosis result as
one self-contained HTML page (inline SVG figures, no network at view time).

    from resnets.report import write_page
    write_page(["runs/resnet20"])                 # runs/resnet20/report.html
    write_page(["studies/degradation"])           # studies/degradation/report.html
    write_page(["runs/a", "runs/b"], "ab.html")   # compared on one page

This room sits above study and train (it reads what they write, with their own readers and
drawing functions) and below the command line.
"""

from resnets.report.build import build_page, default_out, refresh_study_page, write_page

__all__ = ["build_page", "default_out", "refresh_study_page", "write_page"]

"""The settings and hostile strings the report tests' inputs are made with (conftest.py)."""

STUDY_TRAIN = {"data": "bundled", "iters": 4, "batch_size": 16, "log_every": 2,
               "eval_every": 2, "eval_batch_size": 500, "precision": "fp32", "device": "cpu"}

# what the hostile run holds, where a page shows it (each would run a script if not escaped)
NASTY = {
    "folder": '<img src=x onerror=alert("folder")>',  # a folder name cannot hold "/"
    "name": "<script>alert(1)</script>",
    "data": '"><img src=x onerror=alert(2)>',
    "model_args_key": "<script>alert(3)</script>",
    "lesion_run": "<script>alert(4)</script>",
    "lesion_unit": '"><img src=x onerror=alert(5)>',
    "platform": "</script><script>alert(6)</script>",
    "model": "<script>alert(7)</script>",
    "landscape_run": '<img src=x onerror=alert(8)>',
    "split": "<script>alert(9)</script>",
    "class": '<script>alert(10)</script>"><img src=x onerror=alert(11)>',
}

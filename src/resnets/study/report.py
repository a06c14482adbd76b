"""A study's figure and table, drawn from its runs' metrics files alone (never the models).

- `figure6.png`: the paper's Figure 6. One panel per kind (plain left, residual right), error
  (%) against iterations, training error thin and dashed, test error bold, one colour per depth,
  the same axes on every panel. Curves are means over seeds.
- `table.md` / `table.csv`: Table 6 style, per kind and depth: layers, parameters, final
  training error and test error, mean +- std over seeds.
- `summary.json`: every number in the table, and each run's own.

Final training error is the training error over the last epoch (the mean of the training
records logged in it, weighted by the steps each covers), measured as training runs: with
augmentation, in training mode, as the paper's curves are. Test error is the last test
evaluation, at the end of training.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from pathlib import Path

from resnets.atomic import writable_folder, write_json, write_text
from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.study.plots import plot_figure6
from resnets.study.spec import Run, read_study
from resnets.train.metrics import read_metrics


def final_train_error(records: list[dict]) -> float | None:
    """Step-weighted mean training error (%) over the last epoch of training records."""
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        return None
    last_epoch = train[-1]["epoch"]
    total = weight_sum = 0.0
    previous_step = 0
    for record in train:
        weight = record["step"] - previous_step
        previous_step = record["step"]
        if record["epoch"] > last_epoch - 1 + 1e-9:
            total += record["err"] * weight
            weight_sum += weight
    return total / weight_sum if weight_sum else train[-1]["err"]


def final_test_error(records: list[dict]) -> float | None:
    test = [r for r in records if r.get("split") == "test"]
    return test[-1]["err"] if test else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(study_dir: str | Path) -> dict:
    """Every run's final figures and curves, and the per-(kind, depth) rows of the table."""
    study_dir = Path(study_dir)
    study = read_study(study_dir / "study.toml")
    runs, rows = [], []
    for kind in study.kinds:
        for depth in study.depths:
            group = []
            for seed in study.seeds:
                run_dir = RunDir(study_dir / "runs" / Run(kind, depth, seed).name)
                if not run_dir.has_metrics():
                    continue
                records = read_metrics(run_dir.metrics)
                summary = run_dir.read_summary() if run_dir.finished() else None
                run = {
                    "kind": kind,
                    "depth": depth,
                    "seed": seed,
                    "run_dir": str(run_dir.path.relative_to(study_dir)),
                    "finished": summary is not None,
                    "steps": max((r["step"] for r in records), default=0),
                    "params": summary["params"] if summary else None,
                    "time_s": summary["time_s"] if summary else None,
                    "train_err": final_train_error(records),
                    "test_err": final_test_error(records),
                }
                runs.append(run)
                group.append((run, records))
            if not group:
                continue
            train_mean, train_std = _mean_std([run["train_err"] for run, _ in group])
            test_mean, test_std = _mean_std([run["test_err"] for run, _ in group])
            rows.append(
                {
                    "kind": kind,
                    "depth": depth,
                    "layers": depth,
                    "units_per_stage": (depth - 2) // 6,
                    "params": next((run["params"] for run, _ in group if run["params"]), None),
                    "seeds": [run["seed"] for run, _ in group],
                    "finished": all(run["finished"] for run, _ in group),
                    "train_err_mean": train_mean,
                    "train_err_std": train_std,
                    "test_err_mean": test_mean,
                    "test_err_std": test_std,
                    "curves": _mean_curves([records for _, records in group]),
                }
            )
    if not runs:
        raise UserError(f"{study_dir} has no runs with metrics yet (run `resnets study` first)")
    return {"study": dataclasses.asdict(study), "runs": runs, "rows": rows}


def _mean_curves(record_lists: list[list[dict]]) -> dict:
    """Per split, the error at each step logged by every seed, averaged over seeds."""
    curves = {}
    for split in ("train", "test"):
        per_seed = [{r["step"]: r["err"] for r in records if r.get("split") == split} for records in record_lists]
        common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
        curves[split] = [[step, statistics.fmean(d[step] for d in per_seed)] for step in common]
    return curves


def _format(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return ""
    return f"{mean:.2f} ± {std:.2f}" if seeds > 1 else f"{mean:.2f}"


TABLE_HEADER = ("model", "layers", "params", "train error %", "test error %", "seeds")


def table_rows(data: dict) -> list[list[str]]:
    """Table 6's cells (under TABLE_HEADER), one row per (kind, depth), as every view of the
    table (table.md, `resnets report`'s page) shows them."""
    rows = []
    for row in data["rows"]:
        seeds = len(row["seeds"])
        params = f"{row['params']:,}" if row["params"] else ""
        name = f"{row['kind']}{row['depth']}" + ("" if row["finished"] else " (unfinished)")
        rows.append([name, str(row["layers"]), params,
                     _format(row["train_err_mean"], row["train_err_std"], seeds),
                     _format(row["test_err_mean"], row["test_err_std"], seeds), str(seeds)])
    return rows


def table_markdown(data: dict) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(data)]
    return "\n".join(lines) + "\n"


def table_csv(data: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["kind", "depth", "layers", "params", "seeds", "finished",
               "train_err_mean", "train_err_std", "test_err_mean", "test_err_std"]
    writer.writerow(columns)
    for row in data["rows"]:
        writer.writerow([len(row["seeds"]) if c == "seeds" else row[c] for c in columns])
    return buffer.getvalue()


def write_report(study_dir: str | Path) -> list[Path]:
    """Write figure6.png, table.md, table.csv and summary.json under study_dir/report/."""
    study_dir = Path(study_dir)
    if not (study_dir / "study.toml").is_file():
        raise UserError(f"not a study directory (no study.toml): {study_dir}")
    data = collect(study_dir)
    out = writable_folder(study_dir / "report")
    summary = {**data, "rows": [{k: v for k, v in row.items() if k != "curves"} for row in data["rows"]]}
    return [
        plot_figure6(data["rows"], out / "figure6.png"),
        write_text(out / "table.md", table_markdown(data)),
        write_text(out / "table.csv", table_csv(data)),
        write_json(out / "summary.json", summary),
    ]

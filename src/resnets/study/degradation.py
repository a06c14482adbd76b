"""The paper's central experiment: plain and residual twins trained at several depths.

A study is one TOML file (models, depths, seeds, preset, training overrides) saved as
`studies/NAME/study.toml`. Each (model, depth, seed) is an ordinary run directory under
`studies/NAME/runs/`, trained by `resnets.train.fit` with the same recipe and budget. Running a
study again skips finished runs (their `summary.json` exists) and resumes an unfinished one
from its last checkpoint, so a killed study loses at most the steps since that checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from resnets.atomic import write_text
from resnets.errors import UserError

DEFAULT_STUDY = Path(__file__).with_name("degradation.toml")
# The kinds a study compares, and the generic builder each one uses (any 6n+2 depth).
KINDS = {"plain": "cifar_plain", "resnet": "cifar_resnet", "preact_resnet": "cifar_preact_resnet"}


def model_spec(name: str) -> tuple[str, dict]:
    """A registered name as it is, or KIND+DEPTH (`plain74`, `resnet8`) as the generic CIFAR
    builder of that kind with that depth: (registry name, keyword arguments)."""
    from resnets.models import list_models

    if name in list_models():
        return name, {}
    match = re.fullmatch(r"(plain|resnet|preact_resnet)(\d+)", name)
    if match is None:
        return name, {}  # create_model names the closest registered models
    return KINDS[match.group(1)], {"depth": int(match.group(2))}


@dataclass
class Study:
    """What a study trains. Every run gets the same recipe; only model, depth and seed vary."""

    name: str = "degradation"
    kinds: list = field(default_factory=lambda: ["plain", "resnet"])  # keys of KINDS
    depths: list = field(default_factory=lambda: [20, 32, 44, 56])  # 6n+2 each
    seeds: list = field(default_factory=lambda: [0])  # initialisation/shuffling seeds
    preset: str = "quick"  # training preset every run starts from
    train: dict = field(default_factory=dict)  # training config overrides (flat names), same for every run

    def runs(self) -> list["Run"]:
        """Every run, seeds outermost, then depth, then kind: partial results stay balanced."""
        return [
            Run(kind, depth, seed)
            for seed in self.seeds
            for depth in self.depths
            for kind in self.kinds
        ]

    def validate(self) -> "Study":
        from resnets.models.zoo import _cifar_units_per_stage

        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UserError(f"study name must be a plain folder name, got {self.name!r}")
        for kind in self.kinds:
            if kind not in KINDS:
                raise UserError(f"unknown model kind {kind!r} in study; valid: {', '.join(KINDS)}")
        if not self.kinds or not self.depths or not self.seeds:
            raise UserError("a study needs at least one kind, one depth and one seed")
        for depth in self.depths:
            _cifar_units_per_stage(depth)
        for seed in self.seeds:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise UserError(f"seeds must be integers, got {seed!r}")
        for key in ("model", "seed", "out", "name"):
            if key in self.train:
                raise UserError(f"a study sets {key!r} itself for each run; remove it from [train]")
        self.config_for(Run(self.kinds[0], self.depths[0], self.seeds[0]))  # checks preset + train
        return self

    def config_for(self, run: "Run"):
        from resnets.train import resolve_config

        recipe = resolve_config(preset=self.preset, overrides=self.train)  # parses model_args
        model_args = {**recipe.model.model_args, "depth": run.depth}
        overrides = {**self.train, "model": KINDS[run.kind], "model_args": model_args, "seed": run.seed}
        return resolve_config(preset=self.preset, overrides=overrides)

    def to_toml(self) -> str:
        lines = [f"{key} = {_toml_value(getattr(self, key))}" for key in ("name", "kinds", "depths", "seeds", "preset")]
        lines += ["", "[train]"] + [f"{key} = {_toml_value(value)}" for key, value in sorted(self.train.items())]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Run:
    kind: str
    depth: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.depth}-seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.kind}{self.depth}"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise UserError(f"cannot write {value!r} to a study file")


def bundled_studies() -> list[str]:
    """Names of the study files that ship with the package (`--config NAME`)."""
    return sorted(path.stem for path in DEFAULT_STUDY.parent.glob("*.toml"))


def read_study(path: str | Path) -> Study:
    """A Study from a TOML file, or from a bundled study by name ("degradation",
    "paper-cifar10"); unknown keys and bad values raise UserError."""
    path = Path(path)
    if not path.is_file() and path.suffix == "" and str(path) in bundled_studies():
        path = DEFAULT_STUDY.with_name(f"{path}.toml")
    if not path.is_file():
        raise UserError(f"study file not found: {path} (bundled studies: {', '.join(bundled_studies())})")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid TOML: {error}") from None
    return study_from_dict(data, source=str(path))


def study_from_dict(data: dict, source: str = "study") -> Study:
    known = {f.name for f in dataclasses.fields(Study)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{source}: unknown study keys {unknown}; valid: {sorted(known)}")
    values = {**dataclasses.asdict(Study()), **data}
    for key in ("kinds", "depths", "seeds"):
        if not isinstance(values[key], list):
            raise UserError(f"{source}: {key} must be a list, got {values[key]!r}")
    if not isinstance(values["train"], dict):
        raise UserError(f"{source}: [train] must be a table of training settings")
    return Study(**values).validate()


def default_study() -> Study:
    return read_study(DEFAULT_STUDY)


def _is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def _is_resumable(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "last.pt").is_file()


def prepare(study: Study, root: str | Path = "studies") -> Path:
    """Create (or reopen) the study directory; a saved study must match the one asked for."""
    study_dir = Path(root) / study.name
    saved_path = study_dir / "study.toml"
    if saved_path.is_file():
        saved = read_study(saved_path)
        if saved != study:
            raise UserError(
                f"{study_dir} holds a different study ({saved_path}); choose another --name, "
                f"or run `resnets study --name {study.name}` with no other settings to continue it"
            )
    else:
        write_text(saved_path, study.to_toml())
    (study_dir / "runs").mkdir(exist_ok=True)
    return study_dir


def run_study(
    study: Study,
    root: str | Path = "studies",
    *,
    progress: str = "auto",
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train every unfinished run of `study`, then write its report. Returns the study dir."""
    from resnets.study.report import write_report
    from resnets.train import TrainingInterrupted, fit
    from resnets.train.metrics import format_duration

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    study_dir = prepare(study, root)
    runs = study.runs()
    started = time.monotonic()
    trained_layers = 0  # layers x runs trained in this session, to estimate the time left
    for index, run in enumerate(runs, start=1):
        run_dir = study_dir / "runs" / run.name
        if _is_finished(run_dir):
            log(f"[{index}/{len(runs)}] {run.name}: finished earlier, skipped")
            continue
        resume = _is_resumable(run_dir)  # else fit starts afresh, even over a run that died early
        elapsed = time.monotonic() - started
        left = [r.depth for r in runs[index - 1 :] if not _is_finished(study_dir / "runs" / r.name)]
        estimate = f", about {format_duration(elapsed / trained_layers * sum(left))} left" if trained_layers else ""
        verb = "resuming" if resume else "training"
        log(f"[{index}/{len(runs)}] {verb} {run.name} (elapsed {format_duration(elapsed)}{estimate})")
        try:
            fit(study.config_for(run), run_dir, resume=resume, progress=progress)
        except TrainingInterrupted:
            raise TrainingInterrupted(
                f"study interrupted during {run.name} (run {index}/{len(runs)}); its checkpoint is "
                f"saved: run the same `resnets study` command again to continue") from None
        trained_layers += run.depth
    write_report(study_dir)
    log(f"study {study.name}: {len(runs)} runs in {study_dir}; report in {study_dir / 'report'}")
    return study_dir



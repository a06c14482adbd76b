"""What a study is: its definition (`Study`), its runs (`Run`), and reading one from TOML.

A study is one TOML file (model kinds, depths, seeds, preset, training overrides), saved as
`studies/NAME/study.toml`. Every (kind, depth, seed) is one `Run`: the generic CIFAR builder of
that kind (`cifar_plain`, `cifar_resnet`, ...) at that depth, so any 6n+2 depth works, even
those whose KIND+DEPTH name means an ImageNet network (50, 152). The runner
(`degradation.py`) and the report (`report.py`) both import this module, never each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from resnets.errors import UserError
from resnets.models.zoo import KINDS, cifar_units_per_stage, generic_name
from resnets.train.values import toml_value

DEFAULT_STUDY = Path(__file__).with_name("degradation.toml")
# Figure 6 draws test-error curves, so every run of a study evaluates the test split at each
# evaluation point unless the study's [train] says otherwise (the `quick` preset it starts
# from evaluates the test split once, at the end).
RUN_DEFAULTS = {"eval_test": "every"}


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
        from resnets.train.config import check_seed

        if not self.name or "/" in self.name or self.name.startswith("."):
            raise UserError(f"study name must be a plain folder name, got {self.name!r}")
        for kind in self.kinds:
            if kind not in KINDS:
                raise UserError(f"unknown model kind {kind!r} in study; valid: {', '.join(KINDS)}")
        if not self.kinds or not self.depths or not self.seeds:
            raise UserError("a study needs at least one kind, one depth and one seed")
        for depth in self.depths:
            cifar_units_per_stage(depth)
        for seed in self.seeds:
            check_seed("study seeds", seed)
        for key in ("kinds", "depths", "seeds"):  # a repeat would count one run twice
            values = getattr(self, key)
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise UserError(f"study {key} lists {', '.join(repeated)} more than once")
        for key in ("model", "seed", "out", "name"):
            if key in self.train:
                raise UserError(f"a study sets {key!r} itself for each run; remove it from [train]")
        self.config_for(Run(self.kinds[0], self.depths[0], self.seeds[0]))  # checks preset + train
        return self

    def config_for(self, run: "Run"):
        from resnets.train import resolve_config

        recipe = resolve_config(preset=self.preset, overrides=self.train)  # parses model_args
        model_args = {**recipe.model_args, "depth": run.depth}
        overrides = {**RUN_DEFAULTS, **self.train, "model": generic_name("cifar", run.kind),
                     "model_args": model_args, "seed": run.seed}
        return resolve_config(preset=self.preset, overrides=overrides)

    def to_toml(self) -> str:
        lines = [f"{key} = {toml_value(getattr(self, key))}" for key in ("name", "kinds", "depths", "seeds", "preset")]
        lines += ["", "[train]"] + [f"{key} = {toml_value(value)}" for key, value in sorted(self.train.items())]
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
    from resnets.train.config import read_toml  # the one reader of TOML files

    return study_from_dict(read_toml(path, "study file"), source=str(path))


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


def resolve_study(config: str | Path | None = None, *, name: str | None = None,
                  root: str | Path = "studies", changes: dict | None = None,
                  train: dict | None = None) -> Study:
    """The study a command line asks for.

    config: a study file or bundled name (default: the bundled default study). name: the
    study's folder name; a saved study of that name with no other settings is continued as
    it was defined. changes: study keys (kinds, depths, seeds, preset) replacing the file's.
    train: training settings merged over the file's [train] (epochs replaces iters and
    vice versa).
    """
    changes, train = dict(changes or {}), dict(train or {})
    saved = Path(root) / (name or "") / "study.toml"
    if config is None and name and saved.is_file() and not changes and not train:
        return read_study(saved)
    base = read_study(config) if config else default_study()
    definition = {**dataclasses.asdict(base), **changes, "train": {**base.train, **train}}
    if name:
        definition["name"] = name
    for given, dropped in (("epochs", "iters"), ("iters", "epochs")):
        if given in train:
            definition["train"].pop(dropped, None)
    return study_from_dict(definition, source=str(config or "study"))

"""Whether a training run is compiled (`config.compile`), decided per run and kept on resume.

The compiling itself (scope, cache folder) is `resnets.train.compile`'s.

The setting, `config.compile`: True (`--compile`) compiles from the first step; False
(`--no-compile`) never; "auto" (the default) decides per run with `choose_compile`:

- never for a run of fewer than `MIN_STEPS` steps (the quickstart's 364 steps would not pay
  back a cold compile);
- otherwise the run's first `WARMUP_STEPS + MEASURE_STEPS` steps run eagerly (real training
  steps, nothing is wasted) and give the eager step time; compiling is chosen when
  steps x step time x (1 - 1/speedup) exceeds the estimated compile time, with the speedup
  measured earlier on this machine for the same unit graphs (any depth) and settings. Where
  none was measured: on a GPU `EXPECTED_SPEEDUP`; on a CPU compiling is not chosen at all
  (`unmeasured_speedup`): compiled steps ran 0.77-0.83x eager on AVX2 CPUs and 1.1-1.4x on
  AMX ones, so only a measurement on the machine can say, and "auto" must never make a run
  slower than eager. The measurement comes from the runs themselves: every "auto" run keeps
  the eager step time it measured, and a `--compile` run its compiled step time, for the
  same unit graphs and settings; once both are on record, the next "auto" run uses their
  ratio. The compile
  time estimated per
  unit graph: none for graphs already compiled in this process, `WARM_SECONDS_PER_GRAPH` for
  graphs in the on-disk cache, `COLD_SECONDS_PER_GRAPH` for the others (or what compiling
  measured on this machine before);
- once compiled, the next steps are timed again, and where the compiled step is not at least
  `MIN_GAIN` times faster than the eager one it goes back to eager ("where it wins").

What was chosen and why is the first line the progress display shows. A study
(`planned_runs`) counts the later runs that reuse the compiled units (same family and kind,
any depth), a deeper network's steps weighted by its depth (`sharing_runs`).

Resume: the decision is saved in the checkpoint (`TrainState.compiled`) once final, and a
resumed "auto" run follows it from its first step, so a compiled run resumes compiled and
computes what the uninterrupted run computed. The decision is timed, so a long "auto"
run stopped in its first dozen steps, before deciding, may decide otherwise when resumed;
a forced setting (True or False) makes even that window exact.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from resnets.train.compile import (COMPILE_SCOPE, attach, compile_targets, compile_unavailable,
                                   detach, eager, use_cache_dir)

SETTINGS = ("auto", True, False)
MIN_STEPS = 1000                 # "auto" never compiles a shorter run
EXPECTED_SPEEDUP = 1.10          # compiled over eager on a GPU with no measurement
MIN_GAIN = 1.03                  # "auto" keeps the compiled step only if this much faster
WARMUP_STEPS = 1                 # eager (and compiled) steps not timed: first-call costs
MEASURE_STEPS = 5                # steps timed for the eager and the compiled step time
COLD_SECONDS_PER_GRAPH = 15.0    # compiling one unit graph, forward and backward, no cache
WARM_SECONDS_PER_GRAPH = 2.0     # the same with its kernels in the on-disk cache
RECORD_NAME = "resnets-compile.json"

_compiled_here: set[str] = set()   # graph signatures compiled in this process
_plan: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "resnets_compile_plan", default=())



def check_setting(value: Any) -> bool | str:
    """`value` as a compile setting: "auto", True or False (strings from TOML files and flags:
    auto, true/false, on/off, yes/no, 1/0); anything else raises ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word == "auto":
            return "auto"
        if word in ("true", "on", "yes", "1"):
            return True
        if word in ("false", "off", "no", "0"):
            return False
    raise ValueError(f"compile must be auto, true or false, got {value!r}")


def unmeasured_speedup(device: torch.device) -> float | None:
    """The speed-up "auto" assumes where this machine has measured none for the run's graphs:
    `EXPECTED_SPEEDUP` on a GPU; None (do not compile) on a CPU, where compiling measured
    slower than eager on some kinds (AVX2) and faster on others (AMX)."""
    return None if device.type == "cpu" else EXPECTED_SPEEDUP


def seconds_text(seconds: float) -> str:
    """41 s, 3:05, 1:02:03."""
    from resnets.train.progress import format_duration

    return f"{seconds:.0f} s" if seconds < 90 else format_duration(seconds)


def choose_compile(steps: int, step_seconds: float, compile_seconds: float, *,
                   speedup: float = EXPECTED_SPEEDUP, min_steps: int = MIN_STEPS
                   ) -> tuple[bool, str]:
    """Whether `steps` training steps of `step_seconds` each (eager) are worth compiling, at
    an expected `speedup` of the compiled step, when compiling takes `compile_seconds`; and
    why, in words. Pure: the caller measures or estimates the three figures."""
    if steps < min_steps:
        return False, (f"{steps:,} steps, fewer than {min_steps:,}: a run this short does "
                       f"not pay back compiling")
    eager = steps * step_seconds
    if speedup < MIN_GAIN:
        return False, (f"compiled steps were measured no faster than eager ones here "
                       f"({speedup:.2f}x)")
    saved = eager * (1.0 - 1.0 / speedup)
    said = (f"{steps:,} steps x {step_seconds:.3g} s = {seconds_text(eager)} eager; compiling "
            f"(~{seconds_text(compile_seconds)})")
    if saved <= compile_seconds:
        return False, f"{said} would save only ~{seconds_text(saved)} at {speedup:.2f}x"
    return True, f"{said} saves ~{seconds_text(saved - compile_seconds)} net at {speedup:.2f}x"


@contextlib.contextmanager
def planned_runs(models: Sequence[str]) -> Iterator[None]:
    """For the block: the models of the runs this process will train, the current one first
    (a study's unfinished runs). "auto" counts the runs that reuse the current run's compiled
    graphs, which share its compile time."""
    token = _plan.set(tuple(models))
    try:
        yield
    finally:
        _plan.reset(token)


def _kind(name: str) -> tuple[tuple, int | None]:
    """((family, kind), depth) of a model name; (name,) and None for a name the registry does
    not know (a test's stand-in), which shares only with itself."""
    try:
        from resnets.models.zoo import describe

        found = describe(name)
        return (found["family"], found["kind"]), found["depth"]
    except Exception:
        return (name,), None


def sharing_runs(model_name: str, plan: Sequence[str], scope: str = COMPILE_SCOPE
                 ) -> tuple[int, float]:
    """(runs, weight): how many runs of `plan` reuse the graphs compiled for `model_name` (at
    least 1: the current one) and what they weigh in this run's steps, a deeper network's
    step counted as slower in proportion to its depth. With "units" the networks of the same
    family and kind share at any depth; with "model" only the same network."""
    kind, depth = _kind(model_name)
    if depth is None and plan and _kind(plan[0])[0] == kind:
        depth = _kind(plan[0])[1]  # a generic name (cifar_resnet): the plan names the depth
    runs, weight = 0, 0.0
    for name in plan:
        other_kind, other_depth = _kind(name)
        if (other_kind == kind if scope == "units" else name == model_name):
            runs += 1
            weight += other_depth / depth if depth and other_depth else 1.0
    return (runs, weight) if runs else (1, 1.0)


# ------------------------------------------------------------------ the record on disk
def _record_path() -> Path:
    return use_cache_dir() / RECORD_NAME


def read_record() -> dict:
    """What compiling measured on this machine before ({} when nothing, or unreadable)."""
    try:
        record = json.loads(_record_path().read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("torch") == torch.__version__ else {}


def _write_record(record: dict) -> None:
    from resnets.atomic import write_json

    try:
        write_json(_record_path(), {**record, "torch": torch.__version__})
    except OSError:  # a read-only cache: the estimates stay the constants
        pass


def _signature(*parts: Any) -> str:
    text = json.dumps([str(p) for p in parts])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class StepCompiler:
    """The training step's model, eager or compiled, and the decision between them.

    The loop calls `begin(report)` once, passes every step through `run(step_fn, ...)`, and
    evaluates inside `eager()`. `decision` is None until final; `on_decision(bool)` is called
    when it becomes final (training saves it in its checkpoint).

    setting: "auto" | True | False; saved: the decision a resumed run's checkpoint holds.
    run_key: what the model and data are (model name and options, input size, batch size,
    precision, memory format, threads): the key of this machine's measurements.
    processes: how many processes train the run together (torchrun); "auto" does not compile
    a run of several, whose processes would each measure and decide on their own.
    assumed_speedup: the speed-up "auto" assumes where none was measured (None: do not
    compile); "device": `unmeasured_speedup(device)`.
    clock: seconds from any origin (tests pass a fake one).
    """

    def __init__(self, model: nn.Module, setting: bool | str, *, device: torch.device,
                 total_steps: int, start_step: int, model_name: str, run_key: Sequence,
                 saved: bool | None = None, on_decision: Callable[[bool], None] | None = None,
                 scope: str = COMPILE_SCOPE, clock: Callable[[], float] = time.perf_counter,
                 processes: int = 1, assumed_speedup: float | None | str = "device"):
        self.model, self.setting, self.device = model, check_setting(setting), device
        if self.setting is not False:
            # Before anything starts TorchInductor, which sets TORCHINDUCTOR_CACHE_DIR to its
            # own default (/tmp/torchinductor_USER) when it finds it unset.
            use_cache_dir()
        self.clock = clock
        self.total_steps, self.start_step = total_steps, start_step
        self.model_name, self.saved, self.scope = model_name, saved, scope
        self.processes = processes
        self.assumed_speedup = (unmeasured_speedup(device) if assumed_speedup == "device"
                                else assumed_speedup)
        if self.setting is True:
            why_not = compile_unavailable(device)
            if why_not is not None:
                from resnets.errors import UserError

                raise UserError(f"--compile: {why_not}; train with --no-compile")
        self.on_decision = on_decision or (lambda on: None)
        self.targets = compile_targets(model, scope)
        whole = _signature(scope, device.type, torch.__version__, *run_key)
        # A unit graph is keyed by what shapes it (the unit itself, input size, batch,
        # precision, memory format, threads), not by the network's name or depth: the units
        # of a resnet20 and a resnet56 are the same graphs, and the speed-up measured for one
        # (`run_key`, the key of this machine's measurements) holds for the other.
        self.graphs = sorted({_signature(whole if len(self.targets) == 1 else "",
                                         device.type, torch.__version__, type(t).__name__,
                                         repr(t), *run_key[2:]) for t in self.targets})
        self.run_key = whole if len(self.targets) == 1 else _signature(scope, *self.graphs)
        self.decision: bool | None = None
        self.phase = "fixed"     # fixed | measure | compile | trial
        self.counted = 0         # steps of the current phase
        self.times: list[float] = []
        self.eager_s = self.compiled_s = self.first_s = None
        self.final_after_trial = False
        self._compiled: dict = {}
        self.report: Callable[[str], None] = lambda text: None

    # ------------------------------------------------------------ what the loop calls
    def begin(self, report: Callable[[str], None]) -> None:
        """Decide what can be decided before the first step, and say it."""
        self.report = report
        steps_left = self.total_steps - self.start_step
        if self.setting is False:
            self._final(False)
            return
        if self.setting is True:
            self._compile_next(f"compile: on (--compile): {self._plan_words()}", trial=False)
            return
        if self.saved is not None:  # a resumed "auto" run does what it did before
            why_not = compile_unavailable(self.device) if self.saved else None
            if why_not is not None:
                self._final(False, f"compile: off (auto; compiled before the resume, but "
                                   f"{why_not})")
            elif self.saved:
                self._compile_next("compile: on (auto, as decided before the resume)",
                                   trial=False)
            else:
                self._final(False, "compile: off (auto, as decided before the resume)")
            return
        # A run too short to pay back compiling is decided first: asking whether torch.compile
        # works here imports TorchDynamo, about 1 s of a 2-core CPU (issue #24).
        runs, weight = sharing_runs(self.model_name, _plan.get(), self.scope)
        if round(steps_left * weight) < MIN_STEPS:
            _, reason = choose_compile(round(steps_left * weight), 0.0, 0.0)
            self._final(False, f"compile: off (auto): {reason}{self._runs_words(runs)}")
            return
        why_not = compile_unavailable(self.device)
        if why_not is None and self.processes > 1:
            # Each process would time its own steps and could decide otherwise.
            why_not = ("a run on several processes is compiled only with --compile, the same "
                       "in every process")
        if why_not is not None:
            self._final(False, f"compile: off (auto): {why_not}")
            return
        self.phase, self.counted, self.times = "measure", 0, []

    def run(self, step_fn: Callable, *args, **kwargs):
        """`step_fn(*args, **kwargs)`: one training step (of a model that is, or holds,
        `self.model`), timed while deciding."""
        if self.phase == "fixed":
            return step_fn(*args, **kwargs)
        self._sync()
        started = self.clock()
        if self.phase == "compile":
            out = self._first_compiled_step(step_fn, args, kwargs)
        else:
            out = step_fn(*args, **kwargs)
        self._sync()
        if self.phase != "fixed":  # (a failed compile has decided)
            self._timed(self.clock() - started)
        return out

    @contextlib.contextmanager
    def eager(self) -> Iterator[nn.Module]:
        """The model uncompiled for the block (evaluation: no compiling of eval graphs)."""
        with eager(self.model) as model:
            yield model

    # ------------------------------------------------------------------- the phases
    def _timed(self, seconds: float) -> None:
        phase = self.phase
        if phase == "compile":
            self.first_s = seconds
            self.phase, self.counted, self.times = "trial", 0, []
            return
        self.counted += 1
        if self.counted > WARMUP_STEPS:
            self.times.append(seconds)
        if len(self.times) < MEASURE_STEPS:
            return
        median = sorted(self.times)[len(self.times) // 2]
        if phase == "measure":
            self.eager_s = median
            self._decide()
        elif phase == "trial":
            self.compiled_s = median
            self._after_trial()

    def _decide(self) -> None:
        record = read_record()
        runs, weight = sharing_runs(self.model_name, _plan.get(), self.scope)
        steps = round((self.total_steps - self.start_step - self.counted) * weight)
        compile_s, cached = self._estimate(record)
        measured = self._measured(record)
        speedup = measured.get("speedup", self.assumed_speedup)
        if speedup is None:  # a CPU that has not measured a compiled step for these graphs
            self._final(False, f"compile: off (auto): no compiled step of these graphs and "
                               f"settings has been measured on this CPU, and compiling runs "
                               f"slower than eager on some CPUs; a run with --compile measures "
                               f"it, and later 'auto' runs use what it measured")
            return
        on, reason = choose_compile(steps, self.eager_s, compile_s, speedup=speedup)
        words = f"compile: {'on' if on else 'off'} (auto): {reason}{self._runs_words(runs)}"
        if "speedup" in measured:
            words += " (speed-up measured here before)"
        words += f"; {cached}"
        if on:
            self._compile_next(words, trial=True)
        else:
            self._final(False, words)

    def _measured(self, record: dict) -> dict:
        """This machine's record for the run's graphs and settings, with the eager step time
        just measured added (kept on disk for a later --compile run), and the speed-up where
        both step times are known."""
        runs = record.setdefault("runs", {})
        measured = runs.setdefault(self.run_key, {})
        if self.eager_s is not None:
            measured["eager_s"] = self.eager_s
            _write_record(record)
        if "speedup" not in measured and measured.get("eager_s") and \
                measured.get("compiled_s"):
            measured["speedup"] = round(measured["eager_s"] / measured["compiled_s"], 3)
        return measured

    def _estimate(self, record: dict) -> tuple[float, str]:
        """Seconds compiling this run's graphs should take, and what that rests on."""
        new = [g for g in self.graphs if g not in _compiled_here]
        if not new:
            return 1.0, "its graphs are compiled in this process already"
        cached = [g for g in new if g in record.get("graphs", {})]
        cold_s = record.get("cold_s_per_graph", COLD_SECONDS_PER_GRAPH)
        warm_s = record.get("warm_s_per_graph", WARM_SECONDS_PER_GRAPH)
        seconds = len(cached) * warm_s + (len(new) - len(cached)) * cold_s
        what = "unit graph" if len(self.targets) > 1 else "graph"
        return seconds, (f"{len(new)} {what}{'s' if len(new) > 1 else ''} to compile, "
                         f"{len(cached)} in the cache")

    def _plan_words(self) -> str:
        compile_s, cached = self._estimate(read_record())
        return f"compiling first (~{seconds_text(compile_s)}: {cached})"

    @staticmethod
    def _runs_words(runs: int) -> str:
        return "" if runs <= 1 else (f" (steps of this run and of the {runs - 1} later runs "
                                     f"of the study that reuse its compiled units, a deeper "
                                     f"network's counted by its depth)")

    def _compile_next(self, words: str, *, trial: bool) -> None:
        try:  # torch.compile itself refuses some setups (an unsupported Python, say)
            self._compiled = attach(self.targets, self._compiled)
        except RuntimeError as error:
            detach(self.targets)
            first = (str(error).strip().splitlines() or [""])[0][:200]
            self._final(False, f"compile: failed ({first}); training eagerly")
            return
        self.report(words)
        self.phase, self.final_after_trial = "compile", not trial
        if not trial:
            self._set_decision(True)

    def _first_compiled_step(self, step_fn: Callable, args: tuple, kwargs: dict):
        """The step that compiles; if compiling fails, the same step eagerly (the BN
        statistics the failed attempt changed are put back first)."""
        import torch._dynamo.exc

        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        try:
            return step_fn(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(buffers[name])
            detach(self.targets)
            cause = getattr(error, "inner_exception", None) or error
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            self._final(False, f"compile: failed ({type(cause).__name__}: {first}); "
                               f"training eagerly")
            return step_fn(*args, **kwargs)

    def _after_trial(self) -> None:
        compile_s = max(0.0, self.first_s - self.compiled_s)
        self._remember(compile_s)
        if self.final_after_trial or self.eager_s is None:
            earlier = read_record().get("runs", {}).get(self.run_key, {}).get("eager_s")
            against = (f" against {earlier:.3g} s eager measured here before "
                       f"({earlier / self.compiled_s:.2f}x)" if earlier else "")
            self.report(f"compile: compiled in {seconds_text(compile_s)}; "
                        f"{self.compiled_s:.3g} s a step{against}")
            self._final(True)
            return
        gain = self.eager_s / self.compiled_s
        said = (f"compile: compiled in {seconds_text(compile_s)}; {self.compiled_s:.3g} s a "
                f"step against {self.eager_s:.3g} s eager ({gain:.2f}x)")
        if gain < MIN_GAIN:
            detach(self.targets)
            self._final(False, f"{said}: no gain here, back to eager")
        else:
            self._final(True, said)

    def _remember(self, compile_s: float) -> None:
        """Note on disk what this compile measured (graphs cached, seconds per graph, the
        speed-up), for the next run's estimate."""
        record = read_record()
        graphs = record.setdefault("graphs", {})
        new = [g for g in self.graphs if g not in _compiled_here]
        if new and compile_s >= 0.5:  # less: nothing was really compiled (torch reused it)
            cold = [g for g in new if g not in graphs]
            if len(cold) == len(new):
                record["cold_s_per_graph"] = round(compile_s / len(new), 2)
            elif not cold:
                record["warm_s_per_graph"] = round(compile_s / len(new), 2)
        for graph in self.graphs:
            graphs[graph] = True
        _compiled_here.update(self.graphs)
        runs = record.setdefault("runs", {})
        eager_s = self.eager_s or runs.get(self.run_key, {}).get("eager_s")
        entry = {"compiled_s": self.compiled_s, "compile_s": round(compile_s, 2)}
        if eager_s:  # measured now, or by an earlier eager run of the same graphs
            entry.update(speedup=round(eager_s / self.compiled_s, 3), eager_s=eager_s)
        runs[self.run_key] = entry
        _write_record(record)

    def _final(self, on: bool, words: str | None = None) -> None:
        self.phase = "fixed"
        if words:
            self.report(words)
        self._set_decision(on)

    def _set_decision(self, on: bool) -> None:
        self.decision = on
        self.on_decision(on)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

"""compile = "auto" | True | False: the decision (pure, and with a fake compiler and clock), the
setting's values, and two real compiles of a tiny ResNet: the compiled step follows the eager
losses, and a compiled run resumes exactly. The two real ones share their compiled graphs (same
model, shapes and precision), so the suite pays for one compile of three small unit graphs."""

import os

import pytest
import torch

import resnets.train.autocompile as decision_module
import resnets.train.compile as compile_module
from resnets.cli import main
from resnets.errors import UserError
from resnets.train import fit, load_checkpoint, resolve_config
from resnets.train.autocompile import StepCompiler, choose_compile
from resnets.train.compile import is_compiled
from resnets.train.config import Config
from resnets.train.metrics import read_metrics
from resnets.train.parts import Parts

from train_fakes import (FakeLoader, FakeNormalizer, fake_load_dataset, make_dataset,
                         tiny_config)


# ------------------------------------------------------------------ the decision, pure
def test_auto_picks_eager_for_a_100_step_run_and_compile_for_a_long_one():
    # Step and compile times are given, not measured: 0.2 s a step, a minute to compile.
    on, reason = choose_compile(100, 0.2, 60.0)
    assert not on and "100 steps, fewer than 1,000" in reason
    on, reason = choose_compile(64_000, 0.2, 60.0)
    assert on and "64,000 steps x 0.2 s" in reason and "saves" in reason


def test_auto_weighs_the_saving_against_the_compile_time():
    assert not choose_compile(400, 10.0, 1.0)[0]  # under MIN_STEPS whatever the figures
    # 2,000 x 0.2 s = 400 s; at 1.1x that saves ~36 s: not worth 60 s, worth 20 s.
    on, reason = choose_compile(2_000, 0.2, 60.0, speedup=1.1)
    assert not on and "would save only" in reason
    assert choose_compile(2_000, 0.2, 20.0, speedup=1.1)[0]
    on, reason = choose_compile(64_000, 0.2, 1.0, speedup=0.97)
    assert not on and "no faster" in reason


def test_the_setting_takes_auto_true_false_and_old_configs_still_load():
    assert resolve_config("quick").compile == "auto"
    for given, meant in (("auto", "auto"), (True, True), (False, False), ("true", True),
                         ("false", False), ("off", False)):
        assert resolve_config("quick", overrides={"compile": given}).compile == meant
    old = resolve_config("quick").to_dict()
    for value in (True, False):  # config.json and checkpoints written when it was a bool
        assert Config.from_dict({**old, "compile": value}).compile is value
    with pytest.raises(UserError, match="compile must be auto, true or false"):
        resolve_config("quick", overrides={"compile": "fast"})
    assert 'compile = "auto"' in resolve_config("quick").to_toml()


@pytest.mark.parametrize("flags, meant", [([], "auto"), (["--compile"], True),
                                          (["--no-compile"], False),
                                          (["--compile", "auto"], "auto"),
                                          (["--compile", "false"], False)])
def test_compile_flags(flags, meant, capsys):
    assert main(["train", *flags, "--print-config"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("compile ="))
    assert line == "compile = " + {True: "true", False: "false", "auto": '"auto"'}[meant]


# --------------------------------------------- StepCompiler with a fake compile and clock
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake_compile(monkeypatch, tmp_path):
    """torch.compile replaced by a wrapper that counts calls; this machine's record in
    tmp_path; torch.compile taken to be available."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(decision_module, "compile_unavailable", lambda device: None)
    monkeypatch.setattr(decision_module, "_compiled_here", set())
    made = []

    def fake(function, **options):
        def compiled(*args, **kwargs):
            compiled.calls += 1
            return function(*args, **kwargs)
        compiled.calls = 0
        made.append(compiled)
        return compiled

    monkeypatch.setattr(torch, "compile", fake)
    return made


def _resnet8():
    from resnets.models import cifar_resnet

    return cifar_resnet(depth=8, width=4, num_classes=4, in_channels=1)


def _drive(compiler, clock, steps, eager_s, compiled_s, compile_s=30.0):
    """Run `steps` steps through `compiler`, each taking eager_s or compiled_s on the fake
    clock (plus compile_s for the step that compiles)."""
    model = compiler.model
    for _ in range(steps):
        def step():
            first = compiler.phase == "compile"
            clock.now += (compiled_s if is_compiled(model) else eager_s) + \
                (compile_s if first else 0.0)
        compiler.run(step)


def _compiler(clock, setting="auto", total=5_000, saved=None, decisions=None,
              assumed_speedup=decision_module.EXPECTED_SPEEDUP):
    """A StepCompiler for resnet8 on the CPU; by default it assumes the speed-up a GPU does
    where nothing was measured (a CPU assumes none: test_a_cpu_compiles_only_where_...)."""
    model = _resnet8()
    return StepCompiler(model, setting, device=torch.device("cpu"), total_steps=total,
                        start_step=0, model_name="resnet8", run_key=("resnet8", {}, [1, 8, 8],
                                                                       16, "fp32", True, 1),
                        saved=saved, clock=clock, assumed_speedup=assumed_speedup,
                        on_decision=(decisions.append if decisions is not None else None))


def test_a_cpu_compiles_only_where_this_machine_measured_compiling_faster(fake_compile):
    # Nothing measured: "auto" on a CPU trains eagerly (compiling ran 0.77-0.83x eager on
    # AVX2), and keeps the eager step time it measured.
    assert decision_module.unmeasured_speedup(torch.device("cpu")) is None
    assert decision_module.unmeasured_speedup(torch.device("cuda")) == \
        decision_module.EXPECTED_SPEEDUP
    clock, said = FakeClock(), []
    first = _compiler(clock, assumed_speedup="device")
    first.begin(said.append)
    _drive(first, clock, 20, eager_s=0.2, compiled_s=0.1)
    assert first.decision is False and not fake_compile
    assert said[0].startswith("compile: off (auto): no compiled step of these graphs")
    assert "--compile measures it" in said[0]
    # --compile measures the compiled step; with the eager time on record, the ratio too.
    said.clear()
    forced = _compiler(clock, setting=True, assumed_speedup="device")
    forced.begin(said.append)
    _drive(forced, clock, 20, eager_s=0.2, compiled_s=0.1)
    assert said[-1].endswith("0.1 s a step against 0.2 s eager measured here before (2.00x)")
    # The next "auto" run compiles, on the measured speed-up.
    said.clear()
    later = _compiler(clock, assumed_speedup="device")
    later.begin(said.append)
    _drive(later, clock, 20, eager_s=0.2, compiled_s=0.1)
    assert said[0].startswith("compile: on (auto)") and "measured here before" in said[0]
    assert later.decision is True


def test_a_cpu_where_compiling_measured_slower_stays_eager(fake_compile):
    clock, said = FakeClock(), []
    _drive_begun = _compiler(clock, assumed_speedup="device")
    _drive_begun.begin(said.append)
    _drive(_drive_begun, clock, 8, eager_s=0.2, compiled_s=0.25)
    forced = _compiler(clock, setting=True, assumed_speedup="device")
    forced.begin(said.append)
    _drive(forced, clock, 20, eager_s=0.2, compiled_s=0.25)  # 0.8x, as on AVX2
    said.clear()
    later = _compiler(clock, assumed_speedup="device")
    later.begin(said.append)
    _drive(later, clock, 20, eager_s=0.2, compiled_s=0.25)
    assert said[0].startswith("compile: off (auto): compiled steps were measured no faster")
    assert later.decision is False


def test_auto_measures_eager_steps_compiles_and_keeps_what_wins(fake_compile):
    clock, said, decisions = FakeClock(), [], []
    compiler = _compiler(clock, decisions=decisions)
    compiler.begin(said.append)
    assert compiler.phase == "measure" and said == [] and not is_compiled(compiler.model)
    _drive(compiler, clock, 20, eager_s=0.2, compiled_s=0.1)
    assert said[0].startswith("compile: on (auto): 4,994 steps x 0.2 s")
    assert "3 unit graphs to compile, 0 in the cache" in said[0]
    assert said[1].startswith("compile: compiled in 30 s; 0.1 s a step against 0.2 s eager")
    assert decisions == [True] and is_compiled(compiler.model)
    assert len(fake_compile) == 3  # one per unit: resnet8 has three
    with compiler.eager() as model:  # evaluation runs it uncompiled
        assert not is_compiled(model)
    assert is_compiled(compiler.model)
    # What it measured is kept for the next run of the same model and settings.
    clock2, said2 = FakeClock(), []
    again = _compiler(clock2)
    again.begin(said2.append)
    _drive(again, clock2, 7, eager_s=0.2, compiled_s=0.1)
    assert "(speed-up measured here before)" in said2[0]
    assert "compiled in this process already" in said2[0]


def test_the_speed_up_measured_for_one_depth_holds_for_another(fake_compile):
    from resnets.models import cifar_resnet

    def compiler(depth, clock):  # depth 14 on: the same five distinct unit graphs
        return StepCompiler(cifar_resnet(depth=depth, width=4, num_classes=4, in_channels=1),
                            "auto", device=torch.device("cpu"), total_steps=5_000,
                            start_step=0, model_name=f"resnet{depth}", clock=clock,
                            assumed_speedup=decision_module.EXPECTED_SPEEDUP,
                            run_key=(f"resnet{depth}", {"depth": depth}, [1, 8, 8], 16, "fp32",
                                     True, 1))

    clock, said = FakeClock(), []
    first = compiler(14, clock)
    first.begin(said.append)
    _drive(first, clock, 20, eager_s=0.2, compiled_s=0.25)
    assert said[-1].endswith("no gain here, back to eager")
    made = len(fake_compile)
    deeper = compiler(20, clock)
    said.clear()
    deeper.begin(said.append)
    _drive(deeper, clock, 7, eager_s=0.3, compiled_s=0.1)
    assert said[0].startswith("compile: off (auto): compiled steps were measured no faster")
    assert deeper.decision is False and len(fake_compile) == made  # nothing compiled again


def test_the_cache_folder_is_ours_even_after_torch_inductor_started(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    StepCompiler(_resnet8(), "auto", device=torch.device("cpu"), total_steps=100, start_step=0,
                 model_name="resnet8", run_key=("resnet8",))
    compile_module.compile_unavailable(torch.device("cpu"))  # starts TorchInductor's parts
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(tmp_path / "resnets" / "torch-compile")


def test_the_cache_folder_is_ours_even_where_torch_had_set_its_default_first(monkeypatch,
                                                                            tmp_path):
    # Building a model can import torch._dynamo, which sets the variable to torch's own
    # /tmp/torchinductor_USER before training reaches its compiler (found by a user's run).
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.setattr(compile_module, "USER_CACHE_DIR", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(default_cache_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_module.use_cache_dir() == tmp_path / "resnets" / "torch-compile"
    assert cache_dir() == str(tmp_path / "resnets" / "torch-compile")
    # The same value set by the user is theirs.
    monkeypatch.setattr(compile_module, "USER_CACHE_DIR", os.path.abspath(default_cache_dir()))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.path.abspath(default_cache_dir()))
    assert str(compile_module.use_cache_dir()) == os.path.abspath(default_cache_dir())


def test_auto_goes_back_to_eager_where_the_compiled_step_is_no_faster(fake_compile):
    clock, said, decisions = FakeClock(), [], []
    compiler = _compiler(clock, decisions=decisions)
    compiler.begin(said.append)
    _drive(compiler, clock, 20, eager_s=0.2, compiled_s=0.199)
    assert said[-1].endswith("no gain here, back to eager")
    assert decisions == [False] and not is_compiled(compiler.model)


def test_auto_leaves_a_run_on_several_processes_eager_and_compile_true_still_compiles(
        fake_compile):
    clock, said, decisions = FakeClock(), [], []
    model = _resnet8()
    common = dict(device=torch.device("cpu"), total_steps=64_000, start_step=0,
                  model_name="resnet8", run_key=("resnet8",), clock=clock, processes=2)
    compiler = StepCompiler(model, "auto", on_decision=decisions.append, **common)
    compiler.begin(said.append)
    assert decisions == [False] and compiler.phase == "fixed"
    assert said == ["compile: off (auto): a run on several processes is compiled only with "
                    "--compile, the same in every process"]
    forced = StepCompiler(_resnet8(), True, **common)
    forced.begin(said.append)
    _drive(forced, clock, 2, eager_s=0.2, compiled_s=0.1)
    assert forced.decision is True and is_compiled(forced.model)


def test_where_torch_compile_cannot_work_compile_true_is_one_line_and_a_resume_goes_eager(
        fake_compile, monkeypatch):
    monkeypatch.setattr(decision_module, "compile_unavailable",
                        lambda device: "torch.compile needs a C++ compiler for the CPU")
    with pytest.raises(UserError, match="--compile: torch.compile needs a C\\+\\+ compiler"):
        _compiler(FakeClock(), setting=True)
    said, decisions = [], []
    resumed = _compiler(FakeClock(), saved=True, decisions=decisions)
    resumed.begin(said.append)
    assert decisions == [False] and not is_compiled(resumed.model) and not fake_compile
    assert said[0].startswith("compile: off (auto; compiled before the resume, but torch.compile")


def test_auto_never_compiles_a_short_run_and_says_so_before_the_first_step(fake_compile):
    clock, said, decisions = FakeClock(), [], []
    compiler = _compiler(clock, total=100, decisions=decisions)
    compiler.begin(said.append)
    assert said == ["compile: off (auto): 100 steps, fewer than 1,000: a run this short does "
                    "not pay back compiling"]
    assert decisions == [False] and compiler.phase == "fixed"
    _drive(compiler, clock, 5, eager_s=0.2, compiled_s=0.1)
    assert not fake_compile and len(said) == 1


def test_a_study_counts_the_later_runs_that_reuse_the_compiled_units(fake_compile):
    # 200 steps alone is too short; with the later CIFAR resnets of any depth (not the plain
    # ones), a deeper one's steps weighted by its depth, it is not.
    assert decision_module.sharing_runs("resnet8", ["resnet8", "resnet20", "plain20"]) == \
        (2, 1 + 20 / 8)
    assert decision_module.sharing_runs("resnet8", []) == (1, 1.0)
    # A study's runs train the generic cifar_resnet with a depth; its plan names the depths.
    assert decision_module.sharing_runs("cifar_resnet", ["resnet20", "resnet56", "plain20"]) == \
        (2, 1 + 56 / 20)
    clock, said = FakeClock(), []
    with decision_module.planned_runs(["resnet8", "resnet20", "plain20", "resnet56"] * 2):
        compiler = _compiler(clock, total=200)
        compiler.begin(said.append)
        _drive(compiler, clock, 6, eager_s=1.0, compiled_s=0.5, compile_s=30.0)
    # 194 steps left x 2 x (8 + 20 + 56) / 8
    assert said[0].startswith("compile: on (auto): 4,074 steps")
    assert "the 5 later runs of the study that reuse its compiled units" in said[0]


def test_forced_and_resumed_settings(fake_compile):
    for setting, saved, first in ((True, None, "compile: on (--compile)"),
                                  (False, None, None),
                                  ("auto", True, "compile: on (auto, as decided before"),
                                  ("auto", False, "compile: off (auto, as decided before")):
        clock, said, decisions = FakeClock(), [], []
        compiler = _compiler(clock, setting=setting, total=100, saved=saved,
                             decisions=decisions)
        compiler.begin(said.append)
        if first is None:
            assert said == []
        else:
            assert said[0].startswith(first)
        on = setting is True or saved is True
        assert decisions == [on] and is_compiled(compiler.model) == on


def test_a_failed_compile_trains_that_step_eagerly_with_bn_statistics_put_back(fake_compile,
                                                                                 monkeypatch):
    import torch._dynamo.exc

    def broken(function, **options):
        def compiled(*args, **kwargs):
            function(*args, **kwargs)  # changes the BN statistics, then fails
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no g++"),
                                                          None)
        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    said, decisions = [], []
    compiler = _compiler(FakeClock(), setting=True, decisions=decisions)
    compiler.begin(said.append)
    model = compiler.model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(4, 1, 8, 8)
    expected = _resnet8()
    expected.load_state_dict(before)
    expected.train()(images)
    compiler.run(model, images)
    assert said[-1] == "compile: failed (RuntimeError: no g++); training eagerly"
    assert decisions == [True, False] and not is_compiled(model)
    for key, value in expected.state_dict().items():  # one update, not two
        assert torch.equal(model.state_dict()[key], value), key


# --------------------------------------------------------------- the real compiles
@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """A cache folder for the module (a set TORCHINDUCTOR_CACHE_DIR is kept, so a CI that
    keeps one compiles only once)."""

    mp = pytest.MonkeyPatch()
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("inductor")))
    reason = compile_module.compile_unavailable(torch.device("cpu"))
    if reason:
        mp.undo()
        pytest.skip(reason)
    yield
    mp.undo()


def _resnet_parts():
    from resnets.models import cifar_resnet

    def create_model(name, **kwargs):
        return cifar_resnet(depth=8, width=4, **kwargs)

    return Parts(create_model=create_model, load_dataset=fake_load_dataset,
                 fit_normalizer=FakeNormalizer.fit,
                 normalizer_from_state=FakeNormalizer.from_state_dict, make_loader=FakeLoader)


def test_the_compiled_step_gives_the_eager_losses_for_20_steps(inductor_cache):
    from resnets.train.steps import train_step

    data = make_dataset(16, seed=0)
    images = FakeNormalizer.fit("channel", data.images)(data.images).contiguous(
        memory_format=torch.channels_last)
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = _resnet8().to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if compiled:
            compile_module.attach(compile_module.compile_targets(model))
        losses[compiled] = [train_step(model, optimizer, images, data.labels)[0].item()
                            for _ in range(20)]
        if compiled:
            assert is_compiled(model)
            assert not any("_orig_mod" in key for key in model.state_dict())
    assert losses[True] == pytest.approx(losses[False], rel=2e-2, abs=1e-3)  # bf16 tolerance
    assert losses[True][-1] < 0.5 * losses[True][0]  # and it learns


def test_a_compiled_run_resumes_exactly(inductor_cache, tmp_path, ctrl_c_after_step):
    from resnets.train import TrainingInterrupted

    parts = _resnet_parts()
    config = tiny_config(model="resnet8", iters=10, eval_every=5, compile=True,
                         precision="fp32")
    fit(config, tmp_path / "whole", progress="none", parts=parts)
    ctrl_c_after_step(7)
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "resumed", progress="none", parts=parts)
    assert load_checkpoint(tmp_path / "resumed")["compiled"] is True
    fit(config, tmp_path / "resumed", resume=True, progress="none", parts=parts)

    def train_losses(run):
        return [(r["step"], r["loss"]) for r in read_metrics(run) if r["split"] == "train"]

    assert train_losses(tmp_path / "whole") == train_losses(tmp_path / "resumed")
    whole, resumed = (load_checkpoint(tmp_path / name) for name in ("whole", "resumed"))
    assert whole["compiled"] is True and whole["model_state"].keys() == \
        resumed["model_state"].keys()
    assert not any("_orig_mod" in key for key in whole["model_state"])
    for key, value in whole["model_state"].items():
        assert torch.equal(value, resumed["model_state"][key]), key

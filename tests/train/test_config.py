import pytest

from resnets.errors import UserError
from resnets.train.config import FIELDS, Config, list_presets, resolve_config


def test_presets_are_bundled_toml_files():
    assert {"quick", "paper-cifar"} <= set(list_presets())


def test_quick_preset_is_resnet14_on_bundled_digits_leaving_augmentation_to_the_data():
    config = resolve_config("quick")
    assert config.model == "resnet14" and config.data == "bundled"
    assert config.flip is None and config.pad is None  # the dataset's own: no flips for digits
    assert config.precision == "auto" and config.channels_last
    assert config.device == "auto" and config.epochs is not None and config.iters is None


def test_paper_cifar_preset_is_section_4_2():
    config = resolve_config("paper-cifar")
    assert (config.batch_size, config.lr, config.momentum, config.wd) == (128, 0.1, 0.9, 1e-4)
    assert config.schedule == "step" and config.milestones == [32000, 48000]
    assert config.gamma == 0.1 and config.iters == 64000 and config.epochs is None
    assert config.val_fraction == 0.1 and config.data == "cifar10"  # 45k / 5k
    assert config.pad == 4 and config.flip and config.normalize == "pixel_mean"
    assert (config.warmup, config.warmup_mode, config.warmup_lr, config.warmup_min_depth) == \
        (400, "constant", 0.01, 110)


def test_layers_apply_in_order_preset_file_overrides(tmp_path):
    file = tmp_path / "run.toml"
    file.write_text('lr = 0.05\nbatch_size = 64\n[optim]\nmomentum = 0.8\n')
    config = resolve_config("quick", file, {"lr": 0.3, "seed": None})
    assert config.lr == 0.3  # override beats file
    assert config.batch_size == 64 and config.momentum == 0.8  # file beats preset
    assert config.seed == 0  # a None override leaves the value alone


def test_when_tables_apply_to_their_dataset_only_and_later_layers_still_win(tmp_path):
    # quick crops the bundled digits to their centre 20 x 20 ([when.bundled]); CIFAR keeps
    # its whole 32 x 32.
    assert resolve_config("quick").image_crop == 20
    assert resolve_config("quick", overrides={"data": "cifar10"}).image_crop is None
    assert resolve_config("quick", overrides={"image_crop": 24}).image_crop == 24
    assert resolve_config("quick", overrides={"image_crop": 0}).image_crop is None  # whole
    file = tmp_path / "run.toml"
    file.write_text('data = "cifar10"\n[when.cifar10]\nlr = 0.05\n[when.bundled]\nlr = 0.3\n')
    assert resolve_config("quick", file).lr == 0.05
    assert resolve_config("quick", file, {"data": "bundled"}).lr == 0.3
    assert resolve_config("quick", file, {"data": "bundled", "lr": 0.1}).lr == 0.1
    for text, words in (('[when.cifar10]\ndata = "bundled"\n', "data cannot depend on"),
                        ('[when]\ncifar10 = 3\n', "[when.NAME] tables hold settings"),
                        ('[when.bundled]\nnope = 3\n', "[when.bundled]: unknown config key"),
                        ('[when.bundeld]\nlr = 3\n', "no dataset is named 'bundeld'")):
        file.write_text(text)
        with pytest.raises(UserError, match=words.replace("[", "\\[").replace("]", "\\]")):
            resolve_config("quick", file)


def test_iters_in_a_later_layer_replaces_epochs():
    config = resolve_config("quick", overrides={"iters": 5})
    assert config.iters == 5 and config.epochs is None


def test_flat_names_are_unique_and_round_trip():
    config = resolve_config("paper-cifar", overrides={"model_args": {"shortcut": "B"}})
    assert Config.from_dict(config.to_dict()) == config
    grouped = {}  # the layout of older files: fields in [model], [data], [optim], [run] tables
    for name, value in config.to_dict().items():
        grouped.setdefault(FIELDS[name].metadata["group"], {})[name] = value
    assert set(grouped) == {"model", "data", "optim", "run"}
    assert Config.from_dict(grouped) == config
    assert len(FIELDS) == len(config.to_dict())


def test_cli_style_strings_are_parsed():
    config = resolve_config("quick", overrides={"lr": "0.05", "iters": "64e3",
                                                "milestones": "100,200", "nesterov": "false",
                                                "model_args": "shortcut=B,zero_init_last=true"})
    assert config.lr == 0.05 and config.iters == 64000 and config.milestones == [100, 200]
    assert config.nesterov is False
    assert config.model_args == {"shortcut": "B", "zero_init_last": True}


@pytest.mark.parametrize("overrides, words", [
    ({"learning_rate": 0.1}, "unknown config key 'learning_rate'"),
    ({"precision": "fp16"}, "precision must be one of auto, bf16, fp32"),
    ({"lr": -1}, "lr must be > 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"batch_size": "many"}, "batch_size must be an integer"),
    ({"momentum": 1.5}, "momentum must be in [0, 1)"),
    ({"milestones": [300, 100]}, "milestones must be increasing"),
    ({"device": "tpu"}, "device must be"),
    ({"val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
    ({"model_args": {"num_classes": 3}}, "num_classes"),
    ({"epochs": 3, "iters": 4}, "not both"),
])
def test_bad_values_raise_user_error_naming_them(overrides, words):
    with pytest.raises(UserError, match=None) as info:
        resolve_config("quick", overrides=overrides)
    assert words in str(info.value)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(UserError, match="unknown preset 'fast'.*quick"):
        resolve_config("fast")


def test_missing_and_broken_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_config(file=tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        resolve_config(file=bad)


def test_length_is_required():
    with pytest.raises(UserError, match="exactly one of epochs or iters"):
        resolve_config()


def test_freeze_without_weights_is_refused_for_a_new_run_but_an_older_runs_config_loads():
    with pytest.raises(UserError, match="freeze layer1 keeps layers as the weights have them, "
                                        "but no weights are given: add --weights"):
        resolve_config("quick", overrides={"freeze": "layer1"})
    # Runs saved before the rule (train --freeze without --weights was accepted) still load,
    # so they can be resumed, evaluated and exported.
    saved = {**resolve_config("quick").to_dict(), "freeze": "layer1", "weights": None}
    assert Config.from_dict(saved).freeze == "layer1"
    assert Config.from_dict(saved).replace(epochs=3).freeze == "layer1"

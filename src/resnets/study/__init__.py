"""Studies of trained and untrained networks, as library functions that return numbers.

    from resnets.study import lesion, landscape
    result = lesion("runs/resnet56")                    # Veit et al. 2016: units removed
    curves = landscape(["runs/resnet56", "runs/plain56"], dims=1)   # Li et al. 2018

Modules: degradation (the paper's plain-vs-residual study), report, diagnostics, lesioning,
loss_landscape, plots. The two names above are imported on first use, so that reading a
study's files does not load torch.
"""

__all__ = ["landscape", "lesion"]


def __getattr__(name: str):
    if name == "lesion":
        from resnets.study.lesioning import lesion

        return lesion
    if name == "landscape":
        from resnets.study.loss_landscape import landscape

        return landscape
    raise AttributeError(f"module 'resnets.study' has no attribute {name!r}")

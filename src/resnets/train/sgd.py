"""SGD with momentum, weight decay and Nesterov's variant: the update of `torch.optim.SGD`,
with the same state dict, so either can load the other's (a checkpoint written before this
class existed resumes with it).

Why not `torch.optim.SGD` itself: every `torch.optim` optimizer imports TorchDynamo when it is
made (its `add_param_group` and `step` are wrapped to keep the compiler out), about 1 s of a
2-core CPU's time in every process that trains, 3% of the quickstart's half minute, for a
compiler that a run on the CPU does not use unless it compiles (issue #24). The update is
a handful of `torch._foreach_*` calls per parameter group, one kernel launch each for every
parameter, as torch's own multi-tensor SGD does:

    g = grad + wd * p                          (weight decay, coupled, as in the paper)
    v = g                  on the first step
    v = momentum * v + g   after it            (no dampening)
    p = p - lr * (g + momentum * v)            with nesterov, else p - lr * v

Anything beyond that (dampening, maximize, sparse or complex gradients, closures,
differentiable updates) is left to torch.optim: this project never asks for it.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

# The group settings torch.optim.SGD keeps and writes in its state dict, with its defaults:
# written back, so torch's SGD can load what this class saves.
TORCH_GROUP_KEYS = {"dampening": 0, "maximize": False, "foreach": None,
                    "differentiable": False, "fused": None}


class SGD:
    """`torch.optim.SGD(params, lr, momentum, weight_decay=wd, nesterov=...)` without
    TorchDynamo: `param_groups` (each with its "lr", which the training loop sets every
    step), `state` (a parameter's "momentum_buffer"), `zero_grad`, `step`, `state_dict`,
    `load_state_dict`, interchangeable with torch's."""

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum and weight_decay >= 0, got lr {lr}, "
                             f"momentum {momentum}, weight_decay {weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                         "nesterov": nesterov, **TORCH_GROUP_KEYS}
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for group in groups:
            group = {**self.defaults, **group, "params": list(group["params"])}
            if any(id(p) in seen for p in group["params"]):
                raise ValueError("a parameter appears in more than one group")
            seen.update(id(p) for p in group["params"])
            self.param_groups.append(group)
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params)

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)  # a new list: p.grad is kept
        if momentum != 0:
            states = [self.state.setdefault(p, {}) for p in params]
            kept = [i for i, s in enumerate(states) if "momentum_buffer" in s]
            if kept:
                buffers = [states[i]["momentum_buffer"] for i in kept]
                torch._foreach_mul_(buffers, momentum)
                torch._foreach_add_(buffers, [grads[i] for i in kept])
            for i, s in enumerate(states):
                if "momentum_buffer" not in s:  # the first step: v = g
                    s["momentum_buffer"] = grads[i].detach().clone()
            buffers = [s["momentum_buffer"] for s in states]
            grads = (torch._foreach_add(grads, buffers, alpha=momentum) if group["nesterov"]
                     else buffers)
        torch._foreach_add_(params, grads, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: parameters by their index over all groups."""
        params = [p for group in self.param_groups for p in group["params"]]  # each once
        index = {id(p): i for i, p in enumerate(params)}
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [index[id(p)] for p in group["params"]]}
                  for group in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict written by this class or by torch.optim.SGD (the same layout)."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("the optimizer state has other parameter groups than this model's "
                             "trainable parameters")
        by_index = {}
        for saved_group, group in zip(saved, self.param_groups):
            for i, p in zip(saved_group["params"], group["params"]):
                by_index[i] = p
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        self.state = {}
        for i, values in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=p.dtype) if torch.is_tensor(v) else v
                             for k, v in values.items()}

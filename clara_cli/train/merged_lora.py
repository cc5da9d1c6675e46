"""LoRA linear layers of a training pass as one product with the merged weight.

peft computes a LoRA linear layer as two paths, ``y = x Wᵀ + s (x Aᵀ) Bᵀ``: beside the base
product, a thin ``x Aᵀ`` [rows x r], a full-width ``(x Aᵀ) Bᵀ`` and its add; in the backward,
beside the base ``dy W``, a full-width ``(dy B) A`` and its add. Those full-width products of
rank r are bound by memory, not FLOPs: on a CPU the side paths took nearly as long as the base
products of a training step (docs/TRAINING.md, "LoRA merged into the weight, gradients kept
thin").

Here a training pass computes, with ``W' = W + s B A`` merged once per optimizer step and
adapter (no gradient flows through the merge)::

    forward   y   = x W'ᵀ                 x [N, in], W' [out, in]  -> [N, out]
              xa  = x Aᵀ                  [N, r], kept for dB
    backward  dx  = dy W'                 one product for the input gradient
              dxa = s dy B                [N, r]
              dB  = s dyᵀ xa              [out, r]
              dA  = dxaᵀ x                [r, in]

It is the same computation; in bf16, W' is rounded once to the base weight's dtype. Only the
gradients of A and B take thin products, and nothing computes the frozen W's gradient.
Passes without gradients (the frozen memories of `e2e`, `retrieval`, `generator`, inference)
keep peft's path, so they stay what `clara compress` computes.

On a GPU the full-width side products cost little; what costs is the host's work per call, and
peft makes each of its three products, the scaling, the sum and autocast's casts a call and an
autograd node of their own. `MergedLora(..., merge=False)` runs the same two paths unmerged in one
autograd node, two calls fewer per LoRA linear and step (840 fewer in an scp step)::

    forward   xa  = x Aᵀ;  y = x Wᵀ + s xa Bᵀ      (one addmm: the scaling and the sum in its epilogue)
    backward  dxa = s dy B;  dx = dy W + dxa A;  dA = dxaᵀ x;  dB = s dyᵀ xa

(docs/TRAINING.md, "The host's share of a GPU step").
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


class _MergedLoraLinear(torch.autograd.Function):
    """y = x W'ᵀ with W' = W + s B A precomputed; gradients for x, A and B (see the module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, merged: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        dt = merged.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dt)                  # [N, in]
        a = lora_a.to(dt)                                       # [r, in]
        xa = x2 @ a.T                                           # [N, r]
        ctx.save_for_backward(x2, xa, merged, a, lora_b)
        ctx.scaling = scaling
        ctx.x_dtype, ctx.a_dtype = x.dtype, lora_a.dtype
        return (x2 @ merged.T).reshape(*x.shape[:-1], merged.shape[0])  # [..., out]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa, merged, a, lora_b = ctx.saved_tensors
        dt = merged.dtype
        dy2 = dy.reshape(-1, dy.shape[-1]).to(dt)               # [N, out]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = (dy2 @ merged).reshape(*dy.shape[:-1], merged.shape[1]).to(ctx.x_dtype)  # [..., in]
        if ctx.needs_input_grad[2]:
            dxa = (dy2 @ lora_b.to(dt)) * ctx.scaling           # [N, r]
            da = (dxa.T @ x2).to(ctx.a_dtype)                   # [r, in]
        if ctx.needs_input_grad[3]:
            db = ((dy2.T @ xa) * ctx.scaling).to(lora_b.dtype)  # [out, r]
        return dx, None, da, db, None


class _FusedLoraLinear(torch.autograd.Function):
    """y = x Wᵀ + s (x Aᵀ) Bᵀ, unmerged, in one autograd node (see the module doc)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        dt = weight.dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dt)                  # [N, in]
        a, b = lora_a.to(dt), lora_b.to(dt)                     # [r, in], [out, r]
        xa = x2 @ a.T                                           # [N, r]
        y = torch.addmm(x2 @ weight.T, xa, b.T, alpha=scaling)  # [N, out]
        ctx.save_for_backward(x2, xa, weight, a, b)
        ctx.scaling = scaling
        ctx.x_dtype, ctx.a_dtype, ctx.b_dtype = x.dtype, lora_a.dtype, lora_b.dtype
        return y.reshape(*x.shape[:-1], weight.shape[0])         # [..., out]

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, xa, weight, a, b = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1]).to(weight.dtype)     # [N, out]
        dxa = (dy2 @ b) * ctx.scaling                           # [N, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            dx = torch.addmm(dy2 @ weight, dxa, a)              # [N, in]
            dx = dx.reshape(*dy.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
        if ctx.needs_input_grad[2]:
            da = (dxa.T @ x2).to(ctx.a_dtype)                   # [r, in]
        if ctx.needs_input_grad[3]:
            db = ((dy2.T @ xa) * ctx.scaling).to(ctx.b_dtype)   # [out, r]
        return dx, None, da, db, None


def _drops_nothing(dropout: nn.Module) -> bool:
    """peft's dropout module is the identity: nn.Identity, p = 0, or eval mode (`--no-dropout`)."""
    return isinstance(dropout, nn.Identity) or not dropout.training or getattr(dropout, "p", 1.0) == 0.0


def _merged_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A peft lora.Linear's forward: the merged product inside `MergedLora.use` in a pass with
    gradients, when exactly one adapter is active, has a merged weight, and drops nothing out;
    peft's own otherwise."""
    active = self.active_adapters
    if (self.clara_merged_on and torch.is_grad_enabled() and not args and not kwargs
            and not self.disable_adapters and not self.merged and len(active) == 1
            and (active[0] in self.clara_merged or not self.clara_merge)
            and _drops_nothing(self.lora_dropout[active[0]])):
        name = active[0]
        if not self.clara_merge:
            return _FusedLoraLinear.apply(x, self.base_layer.weight, self.lora_A[name].weight,
                                          self.lora_B[name].weight, self.scaling[name])
        return _MergedLoraLinear.apply(x, self.clara_merged[name], self.lora_A[name].weight,
                                       self.lora_B[name].weight, self.scaling[name])
    return type(self).forward(self, x, *args, **kwargs)


def mergeable(module: nn.Module) -> bool:
    """A plain peft LoRA linear layer (no bias, no DoRA or other variant, weight stored [out, in])."""
    from peft.tuners.lora import Linear

    return (isinstance(module, Linear) and isinstance(module.base_layer, nn.Linear)
            and module.base_layer.bias is None and not module.fan_in_fan_out
            and not getattr(module, "lora_variant", {}) and not any(module.use_dora.values()))


class MergedLora:
    """The merged path for the given LoRA layers: installs their forward, which takes it only
    inside `use` (a pass of the Trainable that asked for it; others sharing the model keep
    peft's), and keeps each adapter's merged weights current. merge=False: the fused unmerged
    path instead (a GPU's; no merged weights)."""

    def __init__(self, layers: Sequence[nn.Module], merge: bool = True):
        self.layers = [m for m in layers if mergeable(m)]
        self.merge = merge
        for m in self.layers:
            m.clara_merge = merge
            m.clara_merged = {}       # adapter -> W' [out, in], base dtype, updated in place
            m.clara_merged_key = {}   # adapter -> (A, B) versions and storages it was merged from
            m.clara_merged_on = False
            m.forward = types.MethodType(_merged_forward, m)

    @contextlib.contextmanager
    def use(self, adapter: str) -> Iterator[None]:
        """A pass with `adapter` active: merged again first if it changed (with gradients only)."""
        if torch.is_grad_enabled() and self.merge:
            self.refresh(adapter)
        for m in self.layers:
            m.clara_merged_on = True
        try:
            yield
        finally:
            for m in self.layers:
                m.clara_merged_on = False

    def forget(self) -> None:
        """Merge every adapter again at its next pass, as after an optimizer step (benchmarks,
        whose steps leave A and B as they are, so that they time the merges too)."""
        for m in self.layers:
            m.clara_merged_key = {}

    @torch.no_grad()
    def refresh(self, adapter: str) -> None:
        """Merge `adapter` again wherever its A or B changed since (an optimizer step, a load).
        In place, so a compiled block sees the same tensors."""
        for m in self.layers:
            if adapter not in m.lora_A:
                continue
            a, b = m.lora_A[adapter].weight, m.lora_B[adapter].weight
            key = (a._version, b._version, a.data_ptr(), b.data_ptr())
            if m.clara_merged_key.get(adapter) == key:
                continue
            w = m.base_layer.weight
            out = m.clara_merged.get(adapter)
            if out is None:
                out = m.clara_merged[adapter] = torch.empty_like(w)
            torch.addmm(w, b.to(w.dtype), a.to(w.dtype), alpha=m.scaling[adapter], out=out)
            m.clara_merged_key[adapter] = key

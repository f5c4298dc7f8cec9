"""When a member has converged: the stopping rule of ``sae.train.train_members``.

A rule is checked at *window boundaries*, the update counts s = window, 2 window, ...
(a boundary s is looked at after the s-th optimiser update, after ``after_step_``). Each member
is judged on its own numbers only, so its stop step is the same on every rerun and whether it
trains alone or inside an ensemble (its numbers are bit-identical either way).

``metric="loss"``: cur(s) = the member's mean training loss (``loss_and_grad_``'s ``'loss'``,
accumulated in float64) over the updates s - window .. s - 1; prev = cur(s - window). The member
has converged at s when

    |prev - cur| <= rel_tol * |prev|

The first possible check is therefore at s = 2 window. Fresh batches make this windowed mean
noisy (on batch-correlated toy data its window-to-window jitter is of the order of 1e-3), so a
small ``rel_tol`` can stop a member on noise while its dictionary is still improving.

``metric="eval_loss"``: the member's training objective (``member_losses(x)['loss']`` at the
full sparsity penalty) on one fixed held-out set, the trainer's ``stop_metric(model)``
(``eval_loss_metric(x)``), evaluated before the first update and at every boundary. The set
does not change, so the comparison has no sampling noise. The member has converged at s when

    prev - cur <= rel_tol * |prev|        (prev = metric(s - window), cur = metric(s))

that is, it improved by at most ``rel_tol`` of the previous value (a rise stops it too).

``metric="mmcs_truth"``: the trainer's ``stop_metric(model)`` callback (one value per member of
the current ensemble, e.g. ``mmcs_truth_metric(features)``) is evaluated before the first update
(s = 0) and at every boundary. The member has converged at s when it improved by less than
``rel_tol`` **in absolute terms** over the window:

    metric(s) - metric(s - window) < rel_tol

(absolute, because MMCS is a cosine bounded by 1 and read against absolute bars like 0.9; a
drop counts as "improved by less" and stops the member). A NaN never converges.

Warm-ups: while the L1 coefficient or the learning rate is still warming up the loss is not
comparable from window to window, so a check at s is made only when the earlier of the two
compared windows starts after both warm-ups: s - 2 window >= warmup ("loss"), or
s - window >= warmup ("mmcs_truth", "eval_loss"), warmup = max(l1_warmup_steps, lr_warmup_steps).

A member that has not converged stops at ``max_steps`` (reason ``"max_steps"``); a convergence
at the boundary s = max_steps is reported as ``"converged"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import SAE

__all__ = ["STOP_METRICS", "StopRule", "WindowJudge", "converged", "eval_loss_metric", "mmcs_truth_metric", "replay"]

STOP_METRICS = ("loss", "mmcs_truth", "eval_loss")
CALLBACK_METRICS = ("mmcs_truth", "eval_loss")  # judged on the trainer's stop_metric(model)


def _positive_int(name: str):
    def check(_instance, _attribute, value):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"StopRule.{name} must be a positive int, got {value!r}")

    return check


def _rel_tol(_instance, _attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < float("inf")):
        raise ValueError(f"StopRule.rel_tol must be a finite number >= 0, got {value!r}")


@attrs.frozen
class StopRule:
    """Stop each member at the first window boundary where it has converged, else at max_steps.

    - ``metric``: ``"loss"`` (the member's windowed mean training loss, relative change),
      ``"mmcs_truth"`` (a per-member metric callback, absolute improvement) or
      ``"eval_loss"`` (the objective on a fixed held-out set, a callback, relative
      improvement); see the module docstring for the exact tests.
    - ``rel_tol``: the tolerance (relative for ``"loss"``, absolute for ``"mmcs_truth"``).
    - ``window``: updates per window; checks run at multiples of it.
    - ``max_steps``: the most updates any member gets.
    """

    metric: str = attrs.field(validator=attrs.validators.in_(STOP_METRICS))
    rel_tol: float = attrs.field(validator=_rel_tol)
    window: int = attrs.field(validator=_positive_int("window"))
    max_steps: int = attrs.field(validator=_positive_int("max_steps"))


class WindowJudge:
    """The bookkeeping of one ``StopRule`` over the current members (used by the trainer).

    ``add_losses(v)`` takes one update's [E] loss values (CPU); ``judge(s, model)`` at a
    boundary returns a [E] bool tensor (converged); ``keep(idx)`` drops removed members."""

    def __init__(self, rule: StopRule, n_members: int, warmup: int, metric_fn: Callable[[SAE], Tensor] | None, model: SAE):
        self.rule = rule
        self.warmup = int(warmup)
        self.metric_fn = metric_fn
        self.prev: Tensor | None = None
        self.sum = torch.zeros(n_members, dtype=torch.float64)
        if rule.metric in CALLBACK_METRICS:
            if metric_fn is None:
                hint = "mmcs_truth_metric(features)" if rule.metric == "mmcs_truth" else "eval_loss_metric(x)"
                raise ValueError(f"StopRule(metric={rule.metric!r}) needs a stop_metric callback (e.g. sae.stopping.{hint})")
            self.prev = self._metric(model, n_members)

    def _metric(self, model: SAE, n: int) -> Tensor:
        with torch.no_grad():
            v = torch.as_tensor(self.metric_fn(model)).detach().to("cpu", torch.float64).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"stop_metric returned {v.shape[0]} values for {n} members")
        return v

    def add_losses(self, loss_cpu: Tensor) -> None:
        if self.rule.metric == "loss":
            self.sum += loss_cpu

    def is_boundary(self, s: int) -> bool:
        return s % self.rule.window == 0

    def judge(self, s: int, model: SAE) -> Tensor:
        """Converged flags [E] at boundary s (after update s)."""
        w = self.rule.window
        if self.rule.metric == "loss":
            cur = self.sum / w
            self.sum = torch.zeros_like(self.sum)
            prev, self.prev = self.prev, (cur if s - w >= self.warmup else None)
            if prev is None:
                return torch.zeros(cur.shape[0], dtype=torch.bool)
            return converged(self.rule, prev, cur)
        cur = self._metric(model, model.n_members)
        prev, self.prev = self.prev, cur
        if s - w < self.warmup:
            return torch.zeros(cur.shape[0], dtype=torch.bool)
        return converged(self.rule, prev, cur)

    def keep(self, idx: Tensor) -> None:
        self.sum = self.sum[idx]
        if self.prev is not None:
            self.prev = self.prev[idx]


def converged(rule: StopRule, prev: Tensor, cur: Tensor) -> Tensor:
    """[E] bool: the rule's test between the values of two consecutive boundaries, prev [E]
    and cur [E] (float64), as the module docstring gives it for each metric."""
    tol = rule.rel_tol
    if rule.metric == "loss":
        return (prev - cur).abs() <= tol * prev.abs()
    if rule.metric == "eval_loss":
        return (prev - cur) <= tol * prev.abs()
    return (cur - prev) < tol


def replay(rule: StopRule, values, warmup: int = 0) -> int | None:
    """The boundary s at which one member with these recorded values stops as converged, or
    None (it runs to ``rule.max_steps``): what ``WindowJudge`` decides, applied to a record.

    ``values`` are the member's numbers at successive boundaries of ``rule.window``: for
    ``"loss"``, values[i] is the mean training loss over updates i*window .. (i+1)*window - 1
    (judged at boundary (i+1)*window); for the callback metrics, values[i] is the metric at
    boundary i*window (values[0] before the first update)."""
    w = rule.window
    v = torch.as_tensor(list(values), dtype=torch.float64).reshape(-1, 1)
    offset = 1 if rule.metric == "loss" else 0  # values[i] belongs to boundary (i + offset) * w
    for i in range(1, v.shape[0]):
        s = (i + offset) * w
        if s > rule.max_steps:
            return None
        earlier_start = s - (2 if rule.metric == "loss" else 1) * w
        if earlier_start >= warmup and bool(converged(rule, v[i - 1], v[i])):
            return s
    return None


def mmcs_truth_metric(features: Tensor) -> Callable[[SAE], Tensor]:
    """A ``stop_metric`` for ``metric="mmcs_truth"``: member by member,
    ``sae.metrics.mmcs(features, model.atoms(e))`` (float64 [E]), the recall MMCS of the
    ground-truth features [n, d]."""
    from .metrics import mmcs

    def metric(model: SAE) -> Tensor:
        feats = features.to(model.W_dec.device)
        return torch.tensor([mmcs(feats, model.atoms(e)) for e in range(model.n_members)], dtype=torch.float64)

    return metric


def eval_loss_metric(x: Tensor, chunk: int = 4096) -> Callable[[SAE], Tensor]:
    """A ``stop_metric`` for ``metric="eval_loss"``: member by member, the training objective
    ``member_losses(x)['loss']`` (full sparsity penalty) on the fixed held-out set x [N, d],
    averaged over chunks of ``chunk`` rows weighted by their size (float64 [E])."""

    def metric(model: SAE) -> Tensor:
        out = []
        for e in range(model.n_members):
            total = 0.0
            for i in range(0, x.shape[0], chunk):
                part = x[i : i + chunk]
                total += float(model.member_losses(model.member_input(part, e), e)["loss"]) * part.shape[0]
            out.append(total / x.shape[0])
        return torch.tensor(out, dtype=torch.float64)

    return metric

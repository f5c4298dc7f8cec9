"""Training loop for an ensemble of SAEs (``ReluL1``): Adam, decoder renormalisation, curves.

The hot loop is: fetch batch -> closed-form forward and gradients (five matrix products) -> Adam ->
renormalise atoms -> a finiteness check on the E loss values. Metrics run only at curve points.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .relu_l1 import ReluL1

__all__ = ["NonFiniteLoss", "curve_points", "train"]


def curve_points(steps: int, curve_every: int) -> list[int]:
    """The steps at which curves are recorded: 0, curve_every, 2*curve_every, ..., and steps.

    A point s means "after s optimiser updates". Duplicates are removed (steps itself is
    recorded once even when it is a multiple of curve_every).
    """
    if curve_every <= 0:
        raise ValueError(f"curve_every must be positive, got {curve_every}")
    points = list(range(0, steps + 1, curve_every))
    if points[-1] != steps:
        points.append(steps)
    return points


def _as_floats(v: Tensor) -> list:
    v = torch.as_tensor(v).detach().cpu()
    if v.dtype.is_floating_point:
        return v.double().tolist()
    return v.tolist()


def train(
    model: ReluL1,
    next_batch: Callable[[int], Tensor],
    steps: int,
    lr: float,
    evaluate: Callable[[ReluL1], dict[str, Tensor]] | None = None,
    curve_every: int = 500,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, list]:
    """Train every member of ``model`` in place for ``steps`` steps.

    Per step t = 0 .. steps-1: ``x = next_batch(t)`` ([B, d], shared by all members, or
    [E, B, d]); ``model.loss_and_grad_(x)`` (the gradient of ``losses(x)['loss'].sum()`` in
    closed form); one ``torch.optim.Adam(model.parameters(), lr)`` step (default betas and eps, constant lr, no
    warm-up, no clipping, no weight decay); ``model.renormalise_decoder_()``; then
    ``on_step(t + 1)`` (the number of updates done) if given.

    Curves are recorded at ``curve_points(steps, curve_every)`` (0, every curve_every, and
    the end; a point s is taken after s updates). The returned dict holds
    ``'step': [s, ...]`` and, for each key, one list of E per-member floats per point:

    - ``'train_loss'``, ``'train_mse'``, ``'train_l1'``: the training-batch values of
      ``model.losses`` (``'loss'``, ``'mse'``, unweighted ``'l1'``), averaged over the steps
      since the previous point, i.e. over steps prev .. s-1, each computed on its batch
      before its update. At point 0 (no update yet) they are the values on batch 0 with the
      initial weights. (Named ``train_*`` so they cannot clash with ``evaluate``'s keys.)
    - every key returned by ``evaluate(model)`` (called under ``torch.no_grad`` at each
      point; values are [E] tensors).

    Raises ``FloatingPointError`` naming the member (and step) as soon as a member's training
    loss is NaN or infinite. Randomness: none here; the batches come from ``next_batch``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    points = curve_points(steps, curve_every)
    point_set = set(points)
    E = model.n_members
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    keys = ("loss", "mse", "l1")
    curves: dict[str, list] = {"step": []}
    for k in keys:
        curves[f"train_{k}"] = []
    acc = torch.zeros(len(keys), E, dtype=torch.float64)  # running sums of loss, mse, l1
    n_acc = 0

    def record(s: int, train_means: dict[str, Tensor]) -> None:
        curves["step"].append(s)
        for k in keys:
            curves[f"train_{k}"].append(_as_floats(train_means[k]))
        if evaluate is not None:
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            model.train(was_training)
            for k, v in metrics.items():
                if k == "step" or k.startswith("train_"):
                    raise ValueError(f"evaluate returned reserved key {k!r}")
                curves.setdefault(k, []).append(_as_floats(v))

    pending_zero = 0 in point_set  # point 0 is recorded after the first forward pass
    if steps == 0:
        with torch.no_grad():
            losses = model.losses(next_batch(0))
        _check_finite(losses["loss"], 0)
        record(0, {k: losses[k].detach().double().cpu() for k in keys})
        return curves

    for t in range(steps):
        x = next_batch(t)
        losses = model.loss_and_grad_(x)
        loss_vec = losses["loss"]
        _check_finite(loss_vec, t)
        if pending_zero:
            record(0, {k: losses[k].detach().double().cpu() for k in keys})
            pending_zero = False
        acc += torch.stack([losses[k].detach() for k in keys]).cpu()
        n_acc += 1

        opt.step()
        model.renormalise_decoder_()
        if on_step is not None:
            on_step(t + 1)

        if (t + 1) in point_set:
            record(t + 1, {k: acc[i] / n_acc for i, k in enumerate(keys)})
            acc.zero_()
            n_acc = 0
    return curves


class NonFiniteLoss(FloatingPointError):
    """A member's training loss became NaN or infinite; ``members`` lists every such member."""

    def __init__(self, members: list[int], step: int, value: float):
        self.members = members
        self.step = step
        super().__init__(
            f"SAE member {members[0]} has a non-finite training loss ({value}) at step {step}; "
            f"non-finite members: {members}"
        )


def _check_finite(loss_vec: Tensor, step: int) -> None:
    """Raise NonFiniteLoss naming the members whose loss is not finite."""
    finite = torch.isfinite(loss_vec.detach())
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteLoss(bad, step, loss_vec[bad[0]].item())

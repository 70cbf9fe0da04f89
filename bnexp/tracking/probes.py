"""Probes that test what the BN tutorials claim (docs/bn-science.md has the formulas and sources).

The math is in plain functions that take a model (or any loss closure) and return numbers:

* :func:`channel_moments`, :func:`symmetric_kl`, :func:`mean_shift`: the tutorials' "internal
  covariate shift", the change of a norm site's input (and output) distribution between measurements;
* :func:`internal_covariate_shift`: Santurkar et al. (2018)'s ``||G_i - G'_i||`` and ``cos(G_i, G'_i)``;
* :func:`smoothness`: the loss landscape along the gradient (Santurkar et al. Fig. 4);
* :func:`running_stat_error`: running (EMA) statistics against population ones (Wu & Johnson 2021);
* :func:`signal_propagation`: per-depth channel mean^2 and variance at initialization (Brock et al. 2021).

:class:`ScienceProbes` is the loop listener that runs them at the intervals of the run's
``diagnostics`` config, on a fixed probe batch of training examples, and writes the results to
the run's sinks (TensorBoard by default) and metrics.jsonl (``kind`` ``shift``, ``ics``, ``smooth``, ``signal``, ``renorm``) and
their per-epoch means over sites into the epoch record (so ``show``, ``compare`` and ``report`` see
them). Every probe leaves training exactly as it was: parameters, gradients, BN buffers and the
global RNG are untouched (each probe forward runs under a forked RNG seeded from the step), so a
run with probes on trains to the same numbers as one with them off. Off (the default), the
listener is not even registered.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnexp.engine.callbacks import Callback
from bnexp.engine.recalibrate import buffers_restored
from bnexp.nn.models import norm_layers

VAR_EPS = 1e-5  # keeps the ratios of the shift measures finite for dead channels (as BN's eps does)


# --- distributions at the norm sites ------------------------------------------------------------------


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (biased) variance of ``x`` shaped (N, C, ...), over every dim but 1, in float64."""
    var, mean = torch.var_mean(x.detach().to(torch.float64), dim=(0, *range(2, x.dim())), unbiased=False)
    return mean, var


def symmetric_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> float:
    """Mean over channels of ``KL(p||q) + KL(q||p)`` between the Gaussians ``p = N(mean1, var1)`` and
    ``q = N(mean2, var2)``: ``0.5 * ((v1/v2 + v2/v1 - 2) + (m1 - m2)^2 * (1/v1 + 1/v2))``."""
    v1, v2 = var1 + VAR_EPS, var2 + VAR_EPS
    kl = 0.5 * ((v1 / v2 + v2 / v1 - 2) + (mean1 - mean2).square() * (1 / v1 + 1 / v2))
    return float(kl.mean())


def mean_shift(mean1: Tensor, var1: Tensor, mean2: Tensor) -> float:
    """Mean over channels of ``|m2 - m1| / sqrt(v1)``: how far the mean moved, in the old standard deviations."""
    return float(((mean2 - mean1).abs() / (var1 + VAR_EPS).sqrt()).mean())


@contextlib.contextmanager
def site_capture(model: nn.Module) -> Iterator[dict[str, tuple[Tensor, Tensor]]]:
    """While open, every forward fills ``{site: (input, output)}`` for each norm site."""
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def keep(site):
        def hook(_module, inputs, output):
            captured[site] = (inputs[0].detach(), output.detach())
        return hook

    handles = [m.register_forward_hook(keep(site)) for site, m in norm_layers(model)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def site_moments(model: nn.Module, x: Tensor) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
    """``{site: {"in": (mean, var), "out": (mean, var)}}`` of one forward of ``x`` (no gradients, model's mode)."""
    with site_capture(model) as captured, torch.no_grad():
        model(x)
    return {site: {"in": channel_moments(i), "out": channel_moments(o)} for site, (i, o) in captured.items()}


def signal_propagation(model: nn.Module, x: Tensor) -> list[dict]:
    """Per norm site, in depth order: the channel-averaged squared mean and variance of its input
    and output on the batch ``x`` (Brock et al. 2021's signal propagation plot)."""
    moments = site_moments(model, x)
    rows = []
    for depth, (site, _) in enumerate(norm_layers(model), start=1):
        row = {"site": site, "depth": depth}
        for part in ("in", "out"):
            mean, var = moments[site][part]
            row.update({f"{part}_mean_sq": float(mean.square().mean()), f"{part}_var": float(var.mean())})
        rows.append(row)
    return rows


# --- gradients ----------------------------------------------------------------------------------------


def _gradients(loss_fn: Callable[[], Tensor], params: Sequence[Tensor]) -> tuple[float, list[Tensor]]:
    loss = loss_fn()
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return float(loss.detach()), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum(t.detach().to(torch.float64).square().sum() for t in tensors))


@contextlib.contextmanager
def params_restored(params: Sequence[Tensor]) -> Iterator[None]:
    """Whatever is done to ``params`` inside, they hold their values again afterwards."""
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)


def internal_covariate_shift(loss_fn: Callable[[], Tensor], groups: Sequence[Sequence[Tensor]],
                             lrs: Sequence[Sequence[float]]) -> list[dict]:
    """Santurkar et al.'s ICS of each layer ``i >= 2`` (a group of parameters, in depth order).

    ``G_i``: the gradient of ``loss_fn()`` w.r.t. group i at the current parameters. ``G'_i``: the same
    after every earlier group ``j < i`` took its gradient step ``W_j - lr_j * G_j`` (``lrs``: one
    learning rate per parameter), later groups unchanged. Returns ``{"layer": i, "l2": ||G_i - G'_i||,
    "cos": cos(G_i, G'_i), "rel": ||G_i - G'_i|| / ||G_i||}`` per layer; parameters are restored.
    Cost: one forward/backward, then one per layer from the second.
    """
    flat = [p for group in groups for p in group]
    _, grads = _gradients(loss_fn, flat)
    per_group, start = [], 0
    for group in groups:
        per_group.append(grads[start:start + len(group)])
        start += len(group)
    rows = []
    with params_restored(flat):
        for i in range(1, len(groups)):
            with torch.no_grad():  # earlier layers step (cumulatively: group i-1 is added to the ones before)
                for p, g, lr in zip(groups[i - 1], per_group[i - 1], lrs[i - 1]):
                    p.sub_(g, alpha=lr)
            _, shifted = _gradients(loss_fn, list(groups[i]))
            g, g2 = per_group[i], shifted
            diff = _norm([a - b for a, b in zip(g, g2)])
            norm_g, norm_g2 = _norm(g), _norm(g2)
            dot = sum((a.to(torch.float64) * b.to(torch.float64)).sum() for a, b in zip(g, g2))
            cos = dot / (norm_g * norm_g2) if norm_g > 0 and norm_g2 > 0 else torch.tensor(1.0)
            rows.append({"layer": i + 1, "l2": float(diff), "cos": float(cos),
                         "rel": float(diff / norm_g) if norm_g > 0 else 0.0})
    return rows


def smoothness(loss_fn: Callable[[], Tensor], params: Sequence[Tensor], lrs: Sequence[float],
               multipliers: Sequence[float]) -> dict:
    """The loss landscape along the gradient (Santurkar et al. 2018, Fig. 4).

    With ``g = grad L(x)`` and, for each multiplier ``k``, the step ``s_k = k * lr * g`` (``lrs``: one
    learning rate per parameter): ``loss_range = max_k L(x - s_k) - min_k L(x - s_k)`` (variation of
    the loss along the step), ``grad_pred = max_k ||g - grad L(x - s_k)||`` (gradient predictiveness:
    how much the gradient changes) and ``beta = max_k ||g - grad L(x - s_k)|| / ||s_k||`` (effective
    beta-smoothness). Parameters are restored. Cost: ``1 + len(multipliers)`` forward/backward passes.
    """
    loss0, grads = _gradients(loss_fn, params)
    losses, changes, betas = [], [], []
    with params_restored(params):
        originals = [p.detach().clone() for p in params]
        for k in multipliers:
            steps = [g * (k * lr) for g, lr in zip(grads, lrs)]
            with torch.no_grad():
                for p, x0, s in zip(params, originals, steps):
                    p.copy_(x0 - s)
            loss, moved = _gradients(loss_fn, params)
            change = _norm([a - b for a, b in zip(grads, moved)])
            step = _norm(steps)
            losses.append(loss)
            changes.append(float(change))
            betas.append(float(change / step) if step > 0 else 0.0)
    return {"loss": loss0, "loss_range": max(losses) - min(losses), "grad_pred": max(changes), "beta": max(betas),
            "losses": losses}


# --- running statistics -------------------------------------------------------------------------------


def running_stat_error(ema_mean: Tensor, ema_var: Tensor, pop_mean: Tensor, pop_var: Tensor) -> dict[str, float]:
    """Root mean square over channels of ``(mu_EMA - mu_pop) / sigma_pop`` (``mean_err``) and of
    ``(var_EMA - var_pop) / var_pop`` (``var_err``): how far the running statistics training leaves
    behind are from the population ones, in units of the population's spread."""
    ema_mean, ema_var, pop_mean, pop_var = (t.detach().to(torch.float64) for t in (ema_mean, ema_var, pop_mean, pop_var))
    mean_err = ((ema_mean - pop_mean) / (pop_var + VAR_EPS).sqrt()).square().mean().sqrt()
    var_err = ((ema_var - pop_var) / (pop_var + VAR_EPS)).square().mean().sqrt()
    return {"mean_err": float(mean_err), "var_err": float(var_err)}


def site_stat_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{site: layer}`` for every norm site with running statistics (a wrapper's inner layer)."""
    found = {}
    for site, module in norm_layers(model):
        for m in module.modules():
            if isinstance(getattr(m, "running_mean", None), Tensor) and hasattr(m, "momentum"):
                found[site] = m
                break
    return found


# --- the listener -------------------------------------------------------------------------------------


def parameter_groups(model: nn.Module) -> list[tuple[str, list[Tensor]]]:
    """The "layers" of the ICS measure, in depth order: per norm site, the weights of the conv/linear
    layer before it and the site's own parameters."""
    names = list(model._modules)
    groups = []
    for site, module in norm_layers(model):
        before = model._modules[names[names.index(site) - 1]]
        params = [p for p in (*before.parameters(), *module.parameters()) if p.requires_grad]
        if params:
            groups.append((site, params))
    return groups


class ScienceProbes(Callback):
    """Runs the probes a run's ``diagnostics`` config asks for and records what they find."""

    SUMMARY = {"shift": ("kl_in", "kl_out", "dmu_in", "dmu_out"), "ics": ("l2", "cos", "rel"),
               "smooth": ("loss_range", "grad_pred", "beta"), "renorm": ("r_clip", "d_clip")}

    def __init__(self, cfg, model: nn.Module, out):
        d = cfg.diagnostics
        self.model, self.out = model, out  # out: bnexp.tracking.sinks.Measurements
        self.shift_every, self.ics_every, self.smooth_every = int(d.shift_every), int(d.ics_every), int(d.smooth_every)
        self.smooth_steps = [float(s) for s in d.smooth_steps]
        self.signal = bool(d.signal_prop)
        self.probe_size = int(d.probe_batch or cfg.batch_size)
        self.seed = int(cfg.seed)
        self.log_every = int(cfg.log_every_steps)
        self.renorm = {site: m for site, m in norm_layers(model) for m in m.modules() if hasattr(m, "clip_rates")}
        self.previous: dict | None = None  # last shift measurement
        self.epoch_values: dict[str, list[float]] = {}

    @staticmethod
    def wanted(cfg, model: nn.Module) -> bool:
        """Whether the run asks for a probe, or has norm layers that count clipping (batch renorm)."""
        d = cfg.diagnostics
        return bool(d.shift_every or d.ics_every or d.smooth_every or d.signal_prop
                    or any(hasattr(m, "clip_rates") for m in model.modules()))

    # the probe batch and a forward that leaves no trace

    def on_start(self, loop):
        data = loop.data
        order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(self.seed + 7919))
        idx = order[: max(2, min(self.probe_size, len(order)))].to(data.train_x.device)
        self.x, self.y = data.normalize(data.train_x[idx]), data.train_y[idx]
        step = loop.progress.step
        if self.signal and step == 0:
            with self.untouched(loop, step):
                rows = signal_propagation(self.model, self.x)
            for row in rows:  # TensorBoard's x axis: the depth
                self.record(loop, "signal", row["site"], {k: v for k, v in row.items() if k != "site"},
                            x=row["depth"])
        if self.shift_every:
            with self.untouched(loop, step):
                self.previous = site_moments(self.model, self.x)

    @contextlib.contextmanager
    def untouched(self, loop, step: int) -> Iterator[None]:
        """Train mode, BN buffers restored, global RNG forked and seeded from the step, histograms paused."""
        was_training, hist_due = self.model.training, loop.hist_due
        loop.hist_due = False
        try:
            with buffers_restored(self.model), torch.random.fork_rng(devices=_rng_devices(self.x)):
                torch.manual_seed(self.seed * 1_000_003 + step)
                self.model.train()
                yield
        finally:
            self.model.train(was_training)
            loop.hist_due = hist_due

    def loss(self) -> Tensor:
        return F.cross_entropy(self.model(self.x), self.y)

    def seeded_loss(self, step: int) -> Callable[[], Tensor]:
        """The probe-batch loss, with the same random draws (noisy BN) at every call."""
        def loss() -> Tensor:
            torch.manual_seed(self.seed * 1_000_003 + step)
            return self.loss()
        return loss

    # measurements

    def on_step(self, loop):
        step = loop.progress.step
        if self.shift_every and step % self.shift_every == 0:
            self.measure_shift(loop, step)
        if self.ics_every and step % self.ics_every == 0:
            self.measure_ics(loop, step)
        if self.smooth_every and step % self.smooth_every == 0:
            self.measure_smoothness(loop, step)
        if self.renorm and step % self.log_every == 0:
            for site, layer in self.renorm.items():
                rates = layer.clip_rates()
                if rates:
                    self.record(loop, "renorm", site, rates)

    def measure_shift(self, loop, step: int) -> None:
        with self.untouched(loop, step):
            now = site_moments(self.model, self.x)
        before, self.previous = self.previous, now
        if before is None:
            return
        for site, parts in now.items():
            values = {}
            for part in ("in", "out"):
                (m0, v0), (m1, v1) = before[site][part], parts[part]
                values[f"kl_{part}"] = symmetric_kl(m0, v0, m1, v1)
                values[f"dmu_{part}"] = mean_shift(m0, v0, m1)
                values[f"mean_{part}"] = float(m1.mean())
                values[f"var_{part}"] = float(v1.mean())
            self.record(loop, "shift", site, values)

    def _lrs(self, loop, params) -> list[float]:
        lr_of = {id(p): group["lr"] for group in loop.optimizer.param_groups for p in group["params"]}
        return [lr_of.get(id(p), 0.0) for p in params]

    def measure_ics(self, loop, step: int) -> None:
        groups = parameter_groups(self.model)
        with self.untouched(loop, step):
            rows = internal_covariate_shift(self.seeded_loss(step), [g for _, g in groups],
                                            [self._lrs(loop, g) for _, g in groups])
        for row in rows:
            site = groups[row["layer"] - 1][0]
            self.record(loop, "ics", site, {k: row[k] for k in ("l2", "cos", "rel")})

    def measure_smoothness(self, loop, step: int) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        with self.untouched(loop, step):
            found = smoothness(self.seeded_loss(step), params, self._lrs(loop, params), self.smooth_steps)
        self.record(loop, "smooth", None, {k: v for k, v in found.items() if k != "losses"})

    # recording

    def record(self, loop, kind: str, site: str | None, values: dict, x: int | None = None) -> None:
        """One ``kind`` entry to metrics.jsonl and a ``kind/<name>[/<site>]`` scalar per value to the
        sinks at ``x`` (default: the step)."""
        step = loop.progress.step
        scalars = {f"{kind}/{name}" + (f"/{site}" if site else ""): value for name, value in values.items()
                   if name != "depth"}
        self.out.scalars(scalars, step if x is None else x)
        for name in self.SUMMARY.get(kind, ()):
            if name in values:
                self.epoch_values.setdefault(f"{kind}_{name}", []).append(values[name])
        self.out.entry({"kind": kind, "step": step, "epoch": loop.epoch, **({"site": site} if site else {}), **values})

    def on_validation(self, loop) -> dict:
        values, self.epoch_values = self.epoch_values, {}
        return {key: sum(v) / len(v) for key, v in values.items() if v and all(map(math.isfinite, v))}


def _rng_devices(x: Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []

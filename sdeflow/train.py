"""Training a score model: Adam, EMA weights, periodic test loss, resumable checkpoints, and multi-process DDP.

``train(TrainConfig(...), out="runs/NAME")`` writes ``out`` as a checkpoint (``model.safetensors`` with the EMA
weights + ``config.json``, loadable by ``sdeflow.load``) and the resumable state next to it
(``train_state.safetensors``: raw weights, Adam moments and the random-generator state; ``train_state.json``: step,
optimiser hyper-parameters and the loss history). No pickle is involved. The four files are committed together
(``sdeflow.run_folder``) at step 0, every ``checkpoint_every`` steps and at the end, so after a kill at any instant
the folder loads and resumes; one process at a time may write to it (a lock), and a folder that already holds a run
is only reused with ``resume=True`` or ``overwrite=True``.

Training stops with ``TrainingDivergedError`` at the first non-finite loss or gradient, before the bad update is
applied or saved: the folder keeps the last good checkpoint.

Randomness: one ``torch.Generator`` seeded with ``config.seed`` draws every batch (indices, dequantisation noise,
times and Gaussian noise) for the *global* batch; under DistributedDataParallel (``torchrun --nproc_per_node P``)
each process computes the loss on its 1/P slice and DDP averages the gradients, so P processes reproduce a
single-process run with the same ``batch_size`` up to floating-point reduction order. Resuming restores the
generator, so an interrupted run continues exactly as an uninterrupted one.

EMA (Polyak averaging) with warm-up: theta_ema <- d theta_ema + (1 - d) theta, d = min(ema_decay, (1 + k) / (10 + k))
at step k. Learning rate: linear warm-up over ``warmup`` steps, then constant or cosine decay to 0 at ``steps``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch
from torch import Tensor, nn

from . import _validate as V
from . import checkpoint as ckpt
from . import distributed as D
from . import run_folder
from . import train_state as ts
from .data import Dataset, load_dataset
from .losses import DDPMLoss, DSMLoss
from .models import build_model, default_model_config
from .parametrization import (
    PREDICTIONS,
    ContinuousTime,
    DDPMTimesteps,
    LogNoiseLevel,
    Prediction,
    ScoreModel,
    TimeLabel,
)
from .progress import Progress
from .sde import SDE, SDES, make_sde

__all__ = ["TrainConfig", "TrainResult", "TrainingDivergedError", "train", "SDES", "make_sde"]

LOSSES = ("dsm", "ddpm")
CONDITIONINGS = ("noise_level", "t")
# label_scale of the sinusoidal embedding of c_noise (its largest frequency per unit of c_noise), per network type.
# With 1 the quickstart UNet needs 158 NFE at rtol = atol = 1e-5 against 518 when labelled with 1000 t, at a test
# bpd no worse (benchmarks/RESULTS.md); the 2-D MLP of tests/test_train.py samples the mixture's covariance only with
# 16 (with 1 its probability-flow samples run off into the tails and that test fails).
NOISE_LEVEL_LABEL_SCALE: dict[str, float] = {"unet": 1.0, "mlp": 16.0}
LR_SCHEDULES = ("constant", "cosine")
STATE_WEIGHTS, STATE_JSON = ts.STATE_WEIGHTS, ts.STATE_JSON


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run folder keeps the last good checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in train_state.json; a resumed run must match it except for
    ``steps`` (raise it to train longer; the cosine schedule follows the new length), ``eval_every``, ``eval_size``
    and ``checkpoint_every``).

    ``data`` is a name or path for ``load_dataset`` (``levels``, ``scale``, ``offset`` describe user arrays).
    ``model`` None picks ``default_model_config`` for the data's sample shape. ``loss`` 'dsm' trains a
    continuous-time network with ``DSMLoss(weighting, importance_sampling, eps)``, conditioned on ``conditioning``:
    'noise_level' (default; ``LogNoiseLevel``, c_noise = log(sigma/alpha)/4, with ``label_scale`` from
    ``NOISE_LEVEL_LABEL_SCALE`` unless the model config sets it) or 't' (``ContinuousTime``, label t,
    ``label_scale`` 1000: the conditioning of checkpoints written before the option existed). 'ddpm' trains an
    integer-timestep network with the discrete DDPM loss on ``VPSDE().discrete(N)`` (needs sde 'vp', prediction 'eps').
    ``conditional`` trains a class-conditional network (``num_classes`` = K, the data's classes 0..K-1, recorded in
    the model config) with condition dropout: each training example's label is replaced by the null class K with
    probability ``p_uncond`` (Ho & Salimans 2022), so one network gives both out(x | c) and out(x | none) for
    classifier-free guidance (docs/math.md section 10). The data must carry labels (digits do; user .npz files
    through 'labels' or 'train_labels' / 'test_labels').
    """

    data: str = "digits"
    levels: int | None = None
    scale: float | None = None
    offset: float | None = None
    sde: str = "vp"
    model: dict | None = None
    prediction: Prediction = "eps"
    loss: str = "dsm"
    conditioning: str = "noise_level"
    weighting: Literal["sigma2", "likelihood"] = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5
    N: int = 1000
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 100
    lr_schedule: str = "cosine"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_size: int = 512
    checkpoint_every: int = 1000
    seed: int = 0
    conditional: bool = False
    p_uncond: float = 0.1

    def __post_init__(self) -> None:
        """Validate every field before anything runs (NumPy numbers are accepted and stored as Python numbers)."""
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.data, os.PathLike):
            put("data", os.fspath(self.data))
        if not isinstance(self.data, str) or not self.data:
            raise V.bad_value("data", "a data set name or a .npy/.npz path", self.data, error=TypeError)
        if self.levels is not None:
            put("levels", V.check_int(self.levels, "levels", min=2))
        if self.scale is not None:
            put("scale", V.check_float(self.scale, "scale", min=0, min_open=True))
        if self.offset is not None:
            put("offset", V.check_float(self.offset, "offset"))
        V.check_choice(self.sde, "sde", tuple(SDES))
        if self.model is not None:
            if not isinstance(self.model, dict) or not isinstance(self.model.get("type"), str):
                raise V.bad_value("model", 'a network config dict such as {"type": "mlp", "dim": 2}', self.model,
                                  error=TypeError)
            V.check_json(self.model, "model")
        V.check_choice(self.prediction, "prediction", PREDICTIONS)
        V.check_choice(self.loss, "loss", LOSSES)
        if self.loss == "ddpm" and (self.sde != "vp" or self.prediction != "eps"):
            raise ValueError("loss='ddpm' needs sde='vp' and prediction='eps' (the discrete DDPM schedule).")
        V.check_choice(self.conditioning, "conditioning", CONDITIONINGS)
        V.check_choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        if not isinstance(self.importance_sampling, bool):
            raise V.bad_value("importance_sampling", "True or False", self.importance_sampling, error=TypeError)
        if not isinstance(self.conditional, bool):
            raise V.bad_value("conditional", "True or False", self.conditional, error=TypeError)
        put("p_uncond", V.check_float(self.p_uncond, "p_uncond", min=0, max=1))
        for name in ("steps", "batch_size", "eval_every", "eval_size", "checkpoint_every"):
            put(name, V.check_int(getattr(self, name), name, min=1))
        put("N", V.check_int(self.N, "N", min=2))
        put("warmup", V.check_int(self.warmup, "warmup", min=0))
        put("seed", V.check_int(self.seed, "seed", min=0, max=2**63 - 1))
        put("eps", V.check_float(self.eps, "eps", min=0, max=1, min_open=True, max_open=True))
        put("lr", V.check_float(self.lr, "lr", min=0, min_open=True))
        put("ema_decay", V.check_float(self.ema_decay, "ema_decay", min=0, max=1, max_open=True))
        put("grad_clip", V.check_float(self.grad_clip, "grad_clip", min=0))
        DSMLoss(self.weighting, self.importance_sampling, self.eps)  # validates weighting / eps

    def time_label(self) -> TimeLabel:
        if self.loss == "ddpm":
            return DDPMTimesteps(self.N)
        return LogNoiseLevel(make_sde(self.sde)) if self.conditioning == "noise_level" else ContinuousTime()

    def lr_at(self, step: int) -> float:
        """Learning rate for the update at 0-based ``step``."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.lr_schedule == "constant":
            return self.lr * warm
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * step / self.steps))


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Result of ``train``: the EMA ``model`` (a ScoreModel, eval mode), the data it was trained on, the run's step
    count ``steps`` (= ``config.steps``), ``start_step`` (0 for a fresh run, the step a resumed run continued from;
    this call trained ``steps - start_step`` steps), the loss ``history`` of the whole run (per-step training loss;
    (step, test loss) pairs), the seconds this call trained, the checkpoint folder (None without ``out``)."""

    model: ScoreModel
    data: Dataset
    steps: int
    loss: list[float]
    test_loss: list[tuple[int, float]]
    seconds: float
    checkpoint: Path | None
    config: TrainConfig = field(repr=False)
    start_step: int = 0

    def summary(self) -> str:
        """One line on what this call trained: the steps (new ones of a resumed run), the seconds, the mean loss of
        the last (up to) 100 steps of the run and its last test loss."""
        new = self.steps - self.start_step
        if new == 0:
            msg = f"nothing to train: the run is already at step {self.steps} (raise --steps to train longer)"
        elif self.start_step:
            msg = f"trained steps {self.start_step + 1}..{self.steps} ({new} new steps) in {self.seconds:.1f} s"
        else:
            msg = f"trained {new} steps in {self.seconds:.1f} s"
        tail = self.loss[-min(100, len(self.loss)):]
        if tail:
            msg += f"; mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4f}"
        if self.test_loss:
            msg += f"; test loss {self.test_loss[-1][1]:.4f}"
        return msg


def _num_classes(config: TrainConfig, data: Dataset, test: Dataset | None) -> int | None:
    """K for a conditional run: the training data's classes 0..K-1 (test labels must lie among them)."""
    if not config.conditional:
        return None
    if data.labels is None:
        raise ValueError(
            f"`conditional`=True needs class labels, but the data {config.data!r} has none. Use --data digits, or an "
            ".npz with 'labels' (or 'train_labels' / 'test_labels') next to the data."
        )
    k = data.num_classes
    assert k is not None  # the data has labels (checked above)
    if test is not None and test.labels is not None and int(test.labels.max()) >= k:
        raise ValueError(f"The test labels of {config.data!r} reach {int(test.labels.max())}, but the training "
                         f"labels define classes 0..{k - 1}; relabel the test split.")
    if config.model is not None and config.model.get("num_classes", k) != k:
        raise ValueError(f"`model` sets num_classes={config.model['num_classes']}, but the data has {k} classes; "
                         "leave num_classes out (it is taken from the data).")
    return k


def _model_config(config: TrainConfig, data: Dataset, num_classes: int | None = None) -> dict:
    model = dict(config.model) if config.model is not None else default_model_config(data.sample_shape)
    if num_classes is not None:
        model["num_classes"] = num_classes
    if config.loss == "ddpm":
        model.setdefault("label_scale", 1.0)  # integer timesteps 0..N-1 are already on the sinusoid's scale
    elif config.conditioning == "noise_level":
        model.setdefault("label_scale", NOISE_LEVEL_LABEL_SCALE.get(str(model.get("type")), 1.0))  # c_noise ~[-2, 1.3]
    return model


def _build_net(model_config: dict, config: TrainConfig, data: Dataset, sde: SDE) -> nn.Module:
    """The seeded network, checked to fit the data: one forward pass on two training points before training."""
    try:
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, identical on every rank; global RNG untouched
            torch.manual_seed(config.seed)
            net = build_model(model_config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`model` {model_config} is not a valid network config: {err}") from None
    probe = ScoreModel(net, sde, config.prediction, config.time_label(), num_classes=model_config.get("num_classes"))
    x = data.x[:2]
    try:
        with torch.no_grad():
            out = probe.eps(x, torch.full((len(x),), 0.5))
        if out.shape != x.shape:
            raise RuntimeError(f"the network returns shape {list(out.shape)} for input {list(x.shape)}")
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"`model` {model_config} does not fit the data {config.data!r} (samples of shape "
            f"{list(data.sample_shape)}): {first}. Pass a network for that shape (e.g. \"dim\": "
            f"{data.dim} for an MLP) or omit `model` for the default network."
        ) from None
    return net


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callable[[Progress], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a score network as ``config`` says; checkpoint to ``out`` at step 0, every ``checkpoint_every`` steps
    and at the end.

    ``resume=True`` continues the run in ``out`` from its last checkpoint (written by an earlier run with the same
    config except ``steps``, ``eval_every``, ``eval_size``, ``checkpoint_every``). ``config.steps`` is the run's
    total: a run at step 60 resumed with ``steps=90`` trains steps 61..90 (the cosine schedule follows the new
    length); with ``steps=60`` it trains nothing and returns the run; with ``steps=30`` it raises ``ValueError``
    (steps cannot be undone). A folder that holds a run is refused unless ``resume`` or ``overwrite`` is set
    (``overwrite`` replaces the old run at the first checkpoint, step 0). While training, ``out`` is locked against
    other writers. Under torchrun (WORLD_SIZE > 1) the processes train one model with DistributedDataParallel;
    rank 0 writes the files and calls ``callback``.

    ``callback`` gets ``Progress('train', step, steps, {'loss', 'lr', 'elapsed'})`` after every step (``loss`` that
    step's training loss, ``lr`` its learning rate, ``elapsed`` the seconds since this call began training), with
    ``test_loss`` (the EMA weights' test loss) added on evaluation steps.

    Raises ``TrainingDivergedError`` at the first non-finite loss or gradient (the folder keeps the last good
    checkpoint), ``ValueError``/``TypeError`` for bad arguments, a network that does not fit the data, or a bad
    ``out``, all before training starts; ``FolderLockedError`` while another process writes to ``out``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig; got {type(config).__name__}.")
    if resume and out is None:
        raise ValueError("`resume=True` needs `out`, the folder of the run to continue.")
    if resume and overwrite:
        raise ValueError("Pass at most one of `resume` (continue the run in `out`) and `overwrite` (replace it).")
    device = V.check_device(device)
    ctx = D.init_from_env(str(device))  # joins the process group torchrun describes (gloo on CPU, NCCL on GPU)
    rank, world = ctx.rank, ctx.world_size
    if config.batch_size % world:
        raise ValueError(f"`batch_size` ({config.batch_size}) must be divisible by the number of processes ({world}).")
    if world > 1 and device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    out = V.check_output_dir(out, "out") if out is not None and rank == 0 else (Path(out) if out else None)
    if resume and rank == 0 and (out is None or not out.is_dir()):
        raise FileNotFoundError(f"Cannot resume: {out} does not exist (start the run without resume).")
    data_args = {k: getattr(config, k) for k in ("levels", "scale", "offset") if getattr(config, k) is not None}
    data = load_dataset(config.data, "train", **data_args)
    try:
        test: Dataset | None = load_dataset(config.data, "test", **data_args)
    except ValueError:  # a user array without a test split: no test metrics
        test = None
    sde = make_sde(config.sde)
    model_config = _model_config(config, data, _num_classes(config, data, test))
    net = _build_net(model_config, config, data, sde).to(device)
    args = (config, out, resume, callback, device, rank, world, data, test, sde, model_config, net)
    if out is not None and rank == 0:
        with run_folder.locked(out):
            run_folder.recover(out)
            ts.prepare_folder(out, resume, overwrite)
            return _train(*args)
    return _train(*args)


def _train(config: TrainConfig, out: Path | None, resume: bool, callback: Callable[[Progress], None] | None,
           device: torch.device, rank: int, world: int, data: Dataset, test: Dataset | None, sde: SDE,
           model_config: dict, net: nn.Module) -> TrainResult:
    if len(data.sample_shape) == 3:  # images: channels-last convolutions are ~20% faster on CPU (oneDNN)
        net = net.to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]  (torch's stub omits it)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    start, losses, test_losses = 0, [], []
    if resume and out is not None and run_folder.has_committed(out, STATE_JSON):
        start, losses, test_losses = ts.load_state(out, config, net, ema, opt, gen)
        if start > config.steps:
            raise ValueError(
                f"Cannot resume {out} to `steps`={config.steps}: the run is already at step {start}. Pass steps "
                f">= {start} (steps count the whole run; {start} returns it unchanged)."
            )
    train_net: nn.Module = net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    time_label = config.time_label()
    k = model_config.get("num_classes")
    model = ScoreModel(train_net, sde, config.prediction, time_label, num_classes=k)
    ema_model = ScoreModel(ema, sde, config.prediction, time_label, num_classes=k)
    loss_fn = DDPMLoss() if config.loss == "ddpm" else DSMLoss(config.weighting, config.importance_sampling, config.eps)
    writer = out is not None and rank == 0

    def save(step: int) -> None:
        extra = {"train": {"step": step, "world_size": world, "config": asdict(config)}}
        files = ckpt.checkpoint_files(ema, sde, config.prediction, time_label, model_config, data.info, extra=extra)
        files.update(ts.state_files(step, net, opt, gen, config, losses, test_losses))
        assert out is not None  # only the writer saves
        run_folder.commit(out, files)

    if writer and start == 0:
        save(0)  # the folder is a valid, resumable run from the start
    b = config.batch_size // world
    sl = slice(rank * b, (rank + 1) * b)
    t0 = time.perf_counter()
    step = start
    try:
        for step in range(start, config.steps):
            idx = torch.randint(0, len(data), (config.batch_size,), generator=gen)
            x0 = data.dequantize(gen, idx)
            tt = loss_fn.draw(model, config.batch_size, gen)
            noise = torch.randn(x0.shape, generator=gen)
            cond = None
            if k is not None:  # condition dropout: the null class K with probability p_uncond
                drop = torch.rand(config.batch_size, generator=gen) < config.p_uncond
                labels = cast(Tensor, data.labels)  # k is set for labelled data only
                cond = torch.where(drop, k, labels[idx])[sl].to(device)
            loss = loss_fn.at(model, x0[sl].to(device), tt[sl].to(device), noise[sl].to(device), cond).mean()
            loss_value = loss.detach().clone()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_value)
                loss_value = loss_value / world
            if not bool(torch.isfinite(loss_value)):
                raise _diverged("loss", float(loss_value), step + 1, config, data, out)
            lr = config.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                grad_norm = nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            else:
                grad_norm = nn.utils.get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
            if not bool(torch.isfinite(grad_norm)):
                raise _diverged("gradient norm", float(grad_norm), step + 1, config, data, out)
            opt.step()
            d = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                    pe.lerp_(p, 1 - d)
                for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
                    be.copy_(bn)
            losses.append(float(loss_value))
            done = step + 1
            test_value = None
            if test is not None and rank == 0 and (done % config.eval_every == 0 or done == config.steps):
                test_value = test_loss(ema_model, test, loss_fn, config.eval_size, seed=config.seed + 1)
                if not math.isfinite(test_value):
                    raise _diverged("test loss of the EMA weights", test_value, done, config, data, out)
                test_losses.append((done, test_value))
            if writer and (done % config.checkpoint_every == 0 or done == config.steps):
                save(done)
            if callback is not None and rank == 0:
                info = {"loss": losses[-1], "lr": lr, "elapsed": time.perf_counter() - t0}
                if test_value is not None:
                    info["test_loss"] = test_value
                callback(Progress("train", done, config.steps, info))
    except KeyboardInterrupt:
        if not writer:
            raise
        assert out is not None  # only the writer gets here
        at = ts.folder_state(out).step
        raise KeyboardInterrupt(f"{out} keeps the checkpoint of step {at}; continue with resume=True (--resume)") \
            from None
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    ema_model.eval()
    return TrainResult(ema_model, data, config.steps, losses, test_losses, time.perf_counter() - t0,
                       out, config, start)


def _diverged(what: str, value: float, step: int, config: TrainConfig, data: Dataset, out: Path | None
              ) -> TrainingDivergedError:
    """The error for a non-finite loss or gradient, naming the likely causes with this run's numbers."""
    spread = float(data.x.double().abs().max())
    kept = ""
    if out is not None:
        kept = f" {out} keeps the last good checkpoint (step {ts.folder_state(out).step})."
    scale_hint = (f"the data reach |x| = {spread:.3g}, far from unit scale: rescale them (--scale)"
                  if spread > 100 else f"the data reach |x| = {spread:.3g}")
    return TrainingDivergedError(
        f"Training diverged at step {step}: the {what} is {value}.{kept} Likely causes: the learning rate "
        f"lr={config.lr:g} is too high (try a 10x smaller --lr, a longer --warmup or --grad-clip), or {scale_hint}."
    )


@torch.no_grad()
def test_loss(model: ScoreModel, test: Dataset, loss_fn: DSMLoss | DDPMLoss, size: int = 512, seed: int = 1) -> float:
    """Mean loss of ``model`` on the first ``size`` test points with fixed noise (seeded), comparable across calls."""
    g = torch.Generator().manual_seed(seed)
    n = min(size, len(test))
    device = next(iter(model.net.parameters())).device if isinstance(model.net, nn.Module) else "cpu"
    x0 = test.dequantize(g, torch.arange(n)).to(device)
    # a conditional model is scored on the test labels (the conditional loss), or unconditionally without them
    cond = test.labels[:n].to(device) if model.num_classes is not None and test.labels is not None else None
    tt = loss_fn.draw(model, n, g).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    return float(loss_fn.at(model, x0, tt, noise, cond).mean())


test_loss.__test__ = False  # pyright: ignore[reportFunctionMemberAccess]  (not a pytest test)

"""Training a score model: Adam, EMA weights, periodic test loss, resumable checkpoints, and multi-process DDP.

``train(TrainConfig(...), out="runs/NAME")`` writes ``out`` as a checkpoint (``model.safetensors`` with the EMA
weights + ``config.json``, loadable by ``sdeflow.load``) and the resumable state next to it
(``train_state.safetensors``: raw weights, Adam moments and the random-generator state; ``train_state.json``: step,
optimiser hyper-parameters and the loss history). No pickle is involved.

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
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import checkpoint as ckpt
from ._utils import atomic_write
from .data import Dataset, load_dataset
from .losses import DDPMLoss, DSMLoss
from .models import build_model, default_model_config
from .parametrization import PREDICTIONS, ContinuousTime, DDPMTimesteps, LogNoiseLevel, ScoreModel, TimeLabel
from .sde import SDE, VESDE, VPSDE, SubVPSDE

__all__ = ["TrainConfig", "TrainEvent", "TrainResult", "train", "SDES", "make_sde"]

SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
LOSSES = ("dsm", "ddpm")
CONDITIONINGS = ("noise_level", "t")
# label_scale of the sinusoidal embedding of c_noise (its largest frequency per unit of c_noise), per network type.
# With 1 the quickstart UNet needs 158 NFE at rtol = atol = 1e-5 against 518 when labelled with 1000 t, at a test
# bpd no worse (benchmarks/RESULTS.md); the 2-D MLP of tests/test_train.py samples the mixture's covariance only with
# 16 (with 1 its probability-flow samples run off into the tails and that test fails).
NOISE_LEVEL_LABEL_SCALE: dict[str, float] = {"unet": 1.0, "mlp": 16.0}
LR_SCHEDULES = ("constant", "cosine")
STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def make_sde(name: str) -> SDE:
    """The SDE with default parameters for the CLI name 'vp', 'subvp' or 've'."""
    if name not in SDES:
        raise ValueError(f"Invalid sde {name!r}. Must be one of {tuple(SDES)}.")
    return SDES[name]()


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
    """

    data: str = "digits"
    levels: int | None = None
    scale: float | None = None
    offset: float | None = None
    sde: str = "vp"
    model: dict | None = None
    prediction: str = "eps"
    loss: str = "dsm"
    conditioning: str = "noise_level"
    weighting: str = "sigma2"
    importance_sampling: bool = False
    eps: float = 1e-5
    N: int = 1000  # noqa: N815 - the paper's symbol
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

    def __post_init__(self) -> None:
        make_sde(self.sde)
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"Invalid prediction {self.prediction!r}. Must be one of {PREDICTIONS}.")
        if self.loss not in LOSSES:
            raise ValueError(f"Invalid loss {self.loss!r}. Must be one of {LOSSES}.")
        if self.loss == "ddpm" and (self.sde != "vp" or self.prediction != "eps"):
            raise ValueError("loss='ddpm' needs sde='vp' and prediction='eps' (the discrete DDPM schedule).")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"Invalid conditioning {self.conditioning!r}. Must be one of {CONDITIONINGS}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"Invalid lr_schedule {self.lr_schedule!r}. Must be one of {LR_SCHEDULES}.")
        for name in ("steps", "batch_size", "eval_every", "eval_size", "checkpoint_every"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {v}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must lie in [0, 1); got {self.ema_decay}.")
        if not self.lr > 0 or self.warmup < 0:
            raise ValueError(f"`lr` must be > 0 and `warmup` >= 0; got lr={self.lr}, warmup={self.warmup}.")
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


@dataclass(frozen=True)
class TrainEvent:
    """Passed to the callback after every step (``test_loss`` only on evaluation steps, else None)."""

    step: int
    steps: int
    loss: float
    lr: float
    test_loss: float | None
    elapsed: float


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Result of ``train``: the EMA ``model`` (a ScoreModel, eval mode), the data it was trained on, the loss
    ``history`` (per-step training loss; (step, test loss) pairs), the checkpoint folder (None without ``out``)."""

    model: ScoreModel
    data: Dataset
    steps: int
    loss: list[float]
    test_loss: list[tuple[int, float]]
    seconds: float
    checkpoint: Path | None
    config: TrainConfig = field(repr=False)


def _dist(device: torch.device) -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _model_config(config: TrainConfig, data: Dataset) -> dict:
    model = dict(config.model) if config.model is not None else default_model_config(data.sample_shape)
    if config.loss == "ddpm":
        model.setdefault("label_scale", 1.0)  # integer timesteps 0..N-1 are already on the sinusoid's scale
    elif config.conditioning == "noise_level":
        model.setdefault("label_scale", NOISE_LEVEL_LABEL_SCALE.get(model.get("type"), 1.0))  # c_noise ~[-2, 1.3]
    return model


def _save_state(out: Path, step: int, net: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                config: TrainConfig, loss: list[float], test_loss: list[tuple[int, float]]) -> None:
    tensors = {f"net.{k}": v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for key, value in st.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["rng"] = gen.get_state()
    atomic_write(out / STATE_WEIGHTS, lambda p: save_file(tensors, str(p)))
    meta = {"step": step, "config": asdict(config), "param_groups": osd["param_groups"], "loss": loss,
            "test_loss": test_loss, "weights_sha256": ckpt._sha256(out / STATE_WEIGHTS)}
    atomic_write(out / STATE_JSON, lambda p: p.write_text(json.dumps(meta)))


_MAY_CHANGE = ("steps", "eval_every", "eval_size", "checkpoint_every")  # settings that leave the trajectory as it is


def _load_state(out: Path, config: TrainConfig, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator) -> tuple[int, list[float], list[tuple[int, float]]]:
    try:
        meta = json.loads((out / STATE_JSON).read_text())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Cannot resume: {out / STATE_JSON} does not exist (start without resume).") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ckpt.CheckpointError(f"Corrupt training state: {out / STATE_JSON} is not valid JSON.") from err
    stored = {k: v for k, v in meta["config"].items() if k not in _MAY_CHANGE}
    stored.setdefault("conditioning", "t")  # runs started before the option existed were conditioned on t
    now = {k: v for k, v in asdict(config).items() if k not in _MAY_CHANGE}
    if json.loads(json.dumps(now)) != stored:
        diff = sorted(k for k in now if json.loads(json.dumps(now[k])) != stored.get(k))
        raise ValueError(
            f"Cannot resume {out}: the training config differs in {diff} (only {list(_MAY_CHANGE)} may change)."
        )
    if ckpt._sha256(out / STATE_WEIGHTS) != meta["weights_sha256"]:
        raise ckpt.CheckpointError(f"Corrupt training state: the SHA-256 of {out / STATE_WEIGHTS} does not match.")
    tensors = load_file(str(out / STATE_WEIGHTS))
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
    ema.load_state_dict(ckpt.load(out).net.state_dict())
    state: dict[int, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    gen.set_state(tensors["rng"])
    return int(meta["step"]), list(meta["loss"]), [tuple(x) for x in meta["test_loss"]]


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    callback: Callable[[TrainEvent], None] | None = None,
    device: str | torch.device = "cpu",
) -> TrainResult:
    """Train a score network as ``config`` says; checkpoint to ``out`` every ``checkpoint_every`` steps and at the end.

    ``resume=True`` continues from the state in ``out`` (written by an earlier run with the same config; ``steps``
    may be raised to train longer). Under torchrun (WORLD_SIZE > 1) the processes train one model with
    DistributedDataParallel; rank 0 writes the files and calls ``callback``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig; got {type(config).__name__}.")
    if resume and out is None:
        raise ValueError("`resume=True` needs `out`, the folder of the run to continue.")
    device = torch.device(device)
    rank, world = _dist(device)
    if config.batch_size % world:
        raise ValueError(f"`batch_size` ({config.batch_size}) must be divisible by the number of processes ({world}).")
    if world > 1 and device.type == "cuda":  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    data_args = {k: getattr(config, k) for k in ("levels", "scale", "offset") if getattr(config, k) is not None}
    data = load_dataset(config.data, "train", **data_args)
    try:
        test: Dataset | None = load_dataset(config.data, "test", **data_args)
    except ValueError:  # a user array without a test split: no test metrics
        test = None
    sde = make_sde(config.sde)
    model_config = _model_config(config, data)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, identical on every rank; global RNG untouched
        torch.manual_seed(config.seed)
        net = build_model(model_config).to(device)
    if len(data.sample_shape) == 3:  # images: channels-last convolutions are ~20% faster on CPU (oneDNN)
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    start, losses, test_losses = 0, [], []
    out = Path(out) if out is not None else None
    if resume:
        start, losses, test_losses = _load_state(out, config, net, ema, opt, gen)
    train_net: nn.Module = net
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    time_label = config.time_label()
    model = ScoreModel(train_net, sde, config.prediction, time_label)
    ema_model = ScoreModel(ema, sde, config.prediction, time_label)
    loss_fn = DDPMLoss() if config.loss == "ddpm" else DSMLoss(config.weighting, config.importance_sampling, config.eps)
    b = config.batch_size // world
    sl = slice(rank * b, (rank + 1) * b)
    t0 = time.perf_counter()
    for step in range(start, config.steps):
        idx = torch.randint(0, len(data), (config.batch_size,), generator=gen)
        x0 = data.dequantize(gen, idx)
        if isinstance(loss_fn, DDPMLoss):
            tt = loss_fn.sample_timesteps(config.batch_size, config.N, gen)
            noise = torch.randn(x0.shape, generator=gen)
            loss = loss_fn(model, x0[sl].to(device), timesteps=tt[sl].to(device), noise=noise[sl].to(device))
        else:
            tt = loss_fn.sample_t(sde, config.batch_size, gen)
            noise = torch.randn(x0.shape, generator=gen)
            loss = loss_fn(model, x0[sl].to(device), t=tt[sl].to(device), noise=noise[sl].to(device))
        loss = loss.mean()
        lr = config.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        d = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - d)
            for be, bn in zip(ema.buffers(), net.buffers(), strict=True):
                be.copy_(bn)
        loss_value = loss.detach()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss_value)
            loss_value = loss_value / world
        losses.append(float(loss_value))
        done = step + 1
        test_value = None
        if test is not None and rank == 0 and (done % config.eval_every == 0 or done == config.steps):
            test_value = test_loss(ema_model, test, loss_fn, config.eval_size, seed=config.seed + 1)
            test_losses.append((done, test_value))
        if out is not None and rank == 0 and (done % config.checkpoint_every == 0 or done == config.steps):
            _write(out, config, net, ema, opt, gen, sde, model_config, data, done, losses, test_losses, world)
        if callback is not None and rank == 0:
            callback(TrainEvent(done, config.steps, losses[-1], lr, test_value, time.perf_counter() - t0))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    ema_model.eval()
    return TrainResult(ema_model, data, config.steps, losses, test_losses, time.perf_counter() - t0,
                       out, config)


def _write(out: Path, config: TrainConfig, net: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
           gen: torch.Generator, sde: SDE, model_config: dict, data: Dataset, step: int, losses: list[float],
           test_losses: list[tuple[int, float]], world: int) -> None:
    extra = {"train": {"step": step, "world_size": world, "config": asdict(config)}}
    ckpt.save(out, ema, sde, config.prediction, config.time_label(), model_config, data.info, extra=extra)
    _save_state(out, step, net, opt, gen, config, losses, test_losses)


@torch.no_grad()
def test_loss(model: ScoreModel, test: Dataset, loss_fn: DSMLoss | DDPMLoss, size: int = 512, seed: int = 1) -> float:
    """Mean loss of ``model`` on the first ``size`` test points with fixed noise (seeded), comparable across calls."""
    g = torch.Generator().manual_seed(seed)
    n = min(size, len(test))
    device = next(iter(model.net.parameters())).device if isinstance(model.net, nn.Module) else "cpu"
    x0 = test.dequantize(g, torch.arange(n)).to(device)
    if isinstance(loss_fn, DDPMLoss):
        tt = loss_fn.sample_timesteps(n, model.time_label.N, g).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        return float(loss_fn(model, x0, timesteps=tt, noise=noise).mean())
    tt = loss_fn.sample_t(model.sde, n, g).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    return float(loss_fn(model, x0, t=tt, noise=noise).mean())


test_loss.__test__ = False  # not a pytest test

"""ONNX export of every fixed-grid sampler: graph contract, parity with sdeflow.sample (unrolled and dynamic-steps
graphs), failed-export safety, non-finite inputs and outputs, metadata validation, error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sdeflow import VPSDE, DDPMTimesteps, ScoreModel
from sdeflow.export import NonFiniteOutputError, OnnxExportError, OnnxSampler, export_ddim, export_sampler
from sdeflow.export.verify import relative_error
from sdeflow.sampling import DEFAULT_GRIDS, UniPC, sample

S = 6  # steps: small graphs keep the tests fast; the contract does not depend on S


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine is shared: one torch thread avoids oversubscription (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TinyNet(nn.Module):
    """A small time-conditioned MLP: out = W2 silu(W1 x + emb(label)), sinusoidal emb of a float label."""

    def __init__(self, dim: int = 2, width: int = 32, label_scale: float = 1000.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.scale = label_scale
        self.inp, self.t, self.out = nn.Linear(dim, width), nn.Linear(16, width), nn.Linear(width, dim)
        with torch.no_grad():  # weights ~ N(0, 1/fan_in): eps-like outputs of order 1
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1e4) * torch.arange(8, dtype=torch.float32) / 8)
        arg = label.float()[:, None] * self.scale * freqs[None]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
        return self.out(torch.nn.functional.silu(self.inp(x) + self.t(emb)))


class IntegerTimestepNet(nn.Module):
    """A DDPM-style eps-network that indexes an embedding table with integer timesteps (int64 labels only)."""

    def __init__(self, dim: int = 2, n: int = 1000) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.table = nn.Embedding(n, 16)
        self.inp, self.out = nn.Linear(dim, 16), nn.Linear(16, dim)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.inp(x) + self.table(label)))


def _continuous(pred: str = "eps") -> ScoreModel:
    return ScoreModel(TinyNet(), VPSDE(), prediction=pred)


@pytest.fixture(scope="module")
def stochastic(tmp_path_factory):
    """A continuous-time eps model exported with DDIM eta = 0.5 (inputs x_T and noise)."""
    model = _continuous()
    path = tmp_path_factory.mktemp("onnx") / "eta.onnx"
    return model, export_ddim(model, path, steps=S, eta=0.5, sample_shape=(2,))


def test_graph_contract_inputs_outputs_metadata(stochastic):
    model, report = stochastic
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input}
    assert dims == {"x_T": ["B", 2], "noise": [S, "B", 2]}  # K = S draws of DDIM(eta > 0) on a continuous grid
    assert [o.name for o in proto.graph.output] == ["x_0"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in proto.graph.input)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["sdeflow.sampler"] == "ddim" and json.loads(meta["sdeflow.sampler_options"]) == {"eta": 0.5}
    assert meta["sdeflow.steps"] == str(S) and meta["sdeflow.nfe"] == str(S) and meta["sdeflow.noise_draws"] == str(S)
    assert json.loads(meta["sdeflow.sample_shape"]) == [2] and float(meta["sdeflow.prior_std"]) == 1.0
    assert json.loads(meta["sdeflow.sde"]) == model.sde.config()
    assert json.loads(meta["sdeflow.time_label"]) == {"type": "ContinuousTime"}
    assert json.loads(meta["sdeflow.grid"]) == {"type": DEFAULT_GRIDS["ddim"]}
    assert meta["sdeflow.set_alpha_to_one"] == "null" and meta["sdeflow.graph"] == "unrolled"
    for key in ("sdeflow.version", "sdeflow.prediction", "sdeflow.times", "sdeflow.inputs"):
        assert meta[key]
    assert report.checker_ok and report.shape_inference_ok and report.verified
    assert set(report.parity) == {1, 7, 64} and max(report.parity.values()) <= 1e-5


# every exportable sampler, deterministic and stochastic; each in both graph forms
SAMPLERS = [
    ("ddim", {}),
    ("ddim", {"eta": 0.7}),
    ("ddpm", {}),
    ("dpmsolver++", {"order": 1}),
    ("dpmsolver++", {"order": 2}),
    ("dpmsolver++", {"order": 3}),
    ("sde-dpmsolver++", {"order": 2}),
    ("sde-dpmsolver++", {"order": 3}),
    ("unipc", {"order": 3}),
    ("unipc", {"order": 2, "variant": "bh1", "corrector": False}),
    ("ipndm", {"order": 4}),
    ("deis", {"order": 3}),
    ("heun", {}),
]


@pytest.mark.parametrize("name, options", SAMPLERS, ids=[f"{n}-{o}" for n, o in SAMPLERS])
@pytest.mark.parametrize("dynamic", [None, (3, S)], ids=["unrolled", "scan"])
def test_every_sampler_matches_sdeflow_sample(tmp_path, name, options, dynamic):
    """Relative error <= 1e-5 at B = 1, 7, 64 against sdeflow.sample on the same x_T and noise (the export check),
    and on fresh inputs independent of it; a dynamic-steps graph at each of its step counts."""
    model = _continuous()
    report = export_sampler(
        model, tmp_path / "m.onnx", name, steps=S, sample_shape=(2,), dynamic_steps=dynamic, **options
    )
    assert report.verified and set(report.parity) == {1, 7, 64} and max(report.parity.values()) <= 1e-5
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    assert runner.info.sampler == name and runner.info.options == report.options
    for steps in dynamic or (S,):
        rng = np.random.default_rng(steps)
        k = runner.info.noise_draws_for(steps)
        x_T = rng.standard_normal((7, 2)).astype(np.float32)
        noise = rng.standard_normal((k, 7, 2)).astype(np.float32) if k else None
        ref = sample(
            model,
            model.sde,
            torch.from_numpy(x_T),
            sampler=name,
            steps=steps,
            noise=None if noise is None else torch.from_numpy(noise),
            **options,
        )
        assert ref.noise_draws == k
        assert relative_error(runner.run(x_T, noise, steps=steps), ref.samples.numpy()) < 1e-5
        if k:  # the noise matters: other noise, other samples
            assert relative_error(runner.run(x_T, -noise, steps=steps), ref.samples.numpy()) > 1e-3


def test_scan_graph_shape_and_run_time_step_choice(tmp_path):
    model = _continuous()
    report = export_sampler(
        model, tmp_path / "scan.onnx", "sde-dpmsolver++", steps=S, sample_shape=(2,), dynamic_steps=range(2, 9)
    )
    proto = onnx.load(report.path)
    assert [n.op_type for n in proto.graph.node][-1] == "Scan"
    assert {i.name for i in proto.graph.input} == {"x_T", "labels", "coefficients", "noise_rows"}
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    assert runner.info.dynamic_steps == tuple(range(2, 9)) and set(report.parity_steps) == set(range(2, 9)) - {S}
    assert max(report.parity_steps.values()) <= 1e-5
    with pytest.raises(ValueError, match=r"offers steps in \[2, 3, 4, 5, 6, 7, 8\]; got steps=11"):
        runner.sample(2, steps=11)
    assert runner.sample(3, seed=0, steps=8).shape == (3, 2)


@pytest.mark.parametrize("pred", ["eps", "v", "x0", "score"])
def test_deterministic_parity_for_each_prediction(tmp_path, pred):
    report = export_sampler(_continuous(pred), tmp_path / "m.onnx", UniPC(), steps=S, sample_shape=(2,))
    assert report.verified and max(report.parity.values()) <= 1e-5


def test_integer_timestep_ddpm_network(tmp_path):
    """A DDPM eps-network indexing an embedding table: the discrete schedule ('leading', abar = 1 at the end)."""
    model = ScoreModel(IntegerTimestepNet(), VPSDE(), prediction="eps", time_label=DDPMTimesteps(1000, integer=True))
    report = export_ddim(model, tmp_path / "ddpm.onnx", steps=S, eta=1.0, sample_shape=(2,))
    assert report.grid == {"type": "leading", "offset": 0} and report.verified
    assert report.noise_draws == S - 1  # no noise on the last step to abar = 1
    proto = onnx.load(report.path)
    labels = [i for i in proto.graph.initializer if i.name.endswith("/label")]
    assert len(labels) == S and all(i.data_type == onnx.TensorProto.INT64 for i in labels)
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    x_T, noise = runner.draw(3, seed=4)
    ref = sample(model, model.sde, torch.from_numpy(x_T), steps=S, eta=1.0, noise=torch.from_numpy(noise))
    assert ref.timesteps[:-1].tolist() == [(S - 1 - k) * (1000 // S) for k in range(S)]
    assert relative_error(runner.run(x_T, noise), ref.samples.numpy()) < 1e-5


def test_integer_timestep_scan_graph_with_a_deterministic_step_count(tmp_path):
    """Scan labels keep the network's int64 dtype; DDPM with S = 1 draws no noise (K = 0) in a stochastic graph."""
    model = ScoreModel(IntegerTimestepNet(), VPSDE(), prediction="eps", time_label=DDPMTimesteps(1000, integer=True))
    report = export_sampler(model, tmp_path / "d.onnx", "ddpm", steps=4, sample_shape=(2,), dynamic_steps=(1, 2))
    assert report.verified and report.parity_steps[1] <= 1e-5
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    assert [runner.info.noise_draws_for(s) for s in (1, 2, 4)] == [0, 1, 3]
    x_T, noise = runner.draw(3, seed=0, steps=1)
    assert noise is None
    ref = sample(model, model.sde, torch.from_numpy(x_T), sampler="ddpm", steps=1).samples.numpy()
    assert relative_error(runner.run(x_T, steps=1), ref) < 1e-5


def test_tuned_grid_file_is_exported_with_its_source(tmp_path):
    from sdeflow.sampling import Times, save_grid

    path = save_grid(tmp_path / "tuned.json", Times((1.0, 0.6, 0.3, 0.1, 0.02, 1e-3)))
    report = export_sampler(_continuous(), tmp_path / "t.onnx", "dpmsolver++", grid=path, sample_shape=(2,))
    assert report.steps == 5 and report.grid["source"] == str(path) and report.verified
    info = OnnxSampler(report.path, providers="cpu").info
    assert info.grid == report.grid and json.loads(info.properties["sdeflow.times"])[1] == 0.6
    with pytest.raises(ValueError, match="explicit grid Times fixes the step count"):
        export_sampler(_continuous(), tmp_path / "u.onnx", "ddim", grid=path, sample_shape=(2,), dynamic_steps=(3,))


def test_seeded_samples_do_not_depend_on_batch_size(stochastic):
    runner = OnnxSampler(stochastic[1].path, providers="cpu", threads=1)
    a, b = runner.sample(3, seed=7), runner.sample(5, seed=7)
    np.testing.assert_allclose(a, b[:3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(runner.sample(3, seed=8), a)


def test_runner_errors(stochastic, tmp_path):
    path = stochastic[1].path
    runner = OnnxSampler(path, providers="cpu", threads=1)
    x = np.zeros((4, 2), np.float32)
    noise = np.zeros((S, 4, 2), np.float32)
    with pytest.raises(TypeError, match="must have dtype float32"):
        runner.run(x.astype(np.float64), noise)
    with pytest.raises(ValueError, match=r"`x_T` must have shape \[4, 2\]"):
        runner.run(np.zeros((4, 3), np.float32), noise)
    with pytest.raises(ValueError, match=r"`noise` must have shape \[6, 4, 2\]"):
        runner.run(x, noise[:2])
    with pytest.raises(ValueError, match="needs `noise`"):
        runner.run(x)
    with pytest.raises(ValueError, match="unrolls 6 steps"):
        runner.run(x, noise, steps=4)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        runner.sample(0)
    with pytest.raises(ValueError, match="Invalid providers"):
        OnnxSampler(path, providers="tpu")
    with pytest.raises(FileNotFoundError, match="No ONNX model"):
        OnnxSampler(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[:200] + b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="is not a loadable ONNX model"):
        OnnxSampler(corrupt)
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    vi = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy"]
    graph = onnx.helper.make_graph([node], "g", vi[:1], vi[1:])
    onnx.save(onnx.helper.make_model(graph, ir_version=8, opset_imports=[onnx.helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(ValueError, match="not an sdeflow sampler graph"):
        OnnxSampler(foreign)


def test_non_finite_inputs_are_rejected_and_outputs_flagged(stochastic, tmp_path):
    runner = OnnxSampler(stochastic[1].path, providers="cpu", threads=1)
    x_T, noise = runner.draw(3, seed=0)
    for bad in (np.nan, np.inf):
        x_bad = x_T.copy()
        x_bad[1, 0] = bad
        with pytest.raises(ValueError, match="`x_T` contains 1 NaN or inf values"):
            runner.run(x_bad, noise)
        z_bad = noise.copy()
        z_bad[2, 0, 1] = bad
        with pytest.raises(ValueError, match="`noise` contains 1 NaN or inf values"):
            runner.run(x_T, z_bad)

    class Blowup(nn.Module):  # finite inputs, non-finite outputs for samples with x[:, 0] > 0
        def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return x + torch.log(torch.relu(-x[:, :1])) * 0 * label[:, None]

    model = ScoreModel(Blowup(), VPSDE(), prediction="eps")
    report = export_sampler(model, tmp_path / "nan.onnx", "ddim", steps=2, sample_shape=(2,), verify=False)
    blow = OnnxSampler(report.path, providers="cpu", threads=1)
    x = np.array([[-1.0, 0.0], [1.0, 0.0], [-2.0, 1.0]], np.float32)
    with pytest.raises(NonFiniteOutputError, match=r"NaN or inf for 1 of 3 samples \(indices \[1\]\)") as err:
        blow.run(x)
    assert err.value.indices == [1]
    out = blow.run(x, allow_nonfinite=True)
    assert np.isfinite(out[[0, 2]]).all() and not np.isfinite(out[1]).all()


def _edited(path, tmp_path, key: str, value: str | None):
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    if value is None:
        del props[key]
    else:
        props[key] = value
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    out = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(proto, out)
    return out


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("sdeflow.prior_std", "nan", r"'sdeflow.prior_std' must be a finite number in \(0, 100000\]; got 'nan'"),
        ("sdeflow.prior_std", "1e9", "'sdeflow.prior_std' must be a finite number"),
        ("sdeflow.prior_std", "-1", "'sdeflow.prior_std' must be a finite number"),
        ("sdeflow.prior_std", None, "'sdeflow.prior_std' is missing"),
        ("sdeflow.sample_shape", "[3]", "'sdeflow.sample_shape' must be the shape of one x_T sample"),
        ("sdeflow.sample_shape", "{", "'sdeflow.sample_shape' must be JSON"),
        ("sdeflow.noise_draws", "2", "'sdeflow.noise_draws' must be the first dimension of the graph input noise"),
        ("sdeflow.noise_draws", None, "'sdeflow.noise_draws' is missing"),
        ("sdeflow.steps", "zero", "'sdeflow.steps' must be an integer >= 1"),
        ("sdeflow.graph", "loop", "'sdeflow.graph' must be 'unrolled' or 'scan'"),
        ("sdeflow.sampler", None, "'sdeflow.sampler' is missing"),
        ("sdeflow.sampler_options", "[]", "'sdeflow.sampler_options' must be a JSON dict"),
        ("sdeflow.format", "sdeflow-ddim/1", "not an sdeflow sampler graph"),
        ("sdeflow.data", "[1, 2]", "'sdeflow.data' must be a JSON dict"),
        ("sdeflow.grid", "", "'sdeflow.grid' must be JSON"),
    ],
)
def test_metadata_is_validated(stochastic, tmp_path, key, value, match):
    with pytest.raises(ValueError, match=match):
        OnnxSampler(_edited(stochastic[1].path, tmp_path, key, value), providers="cpu")


def test_dynamic_tables_are_validated(tmp_path):
    report = export_sampler(_continuous(), tmp_path / "d.onnx", "ddpm", steps=3, sample_shape=(2,), dynamic_steps=(2,))
    tables = json.loads({p.key: p.value for p in onnx.load(report.path).metadata_props}["sdeflow.dynamic_tables"])
    broken = json.loads(json.dumps(tables))
    broken["steps"]["2"]["coefficients"][0][0][0] = float("nan")
    with pytest.raises(ValueError, match=r"'sdeflow.dynamic_tables\[steps\]\[2\]\[coefficients\]' must be finite"):
        OnnxSampler(_edited(report.path, tmp_path, "sdeflow.dynamic_tables", json.dumps(broken)), providers="cpu")
    broken = json.loads(json.dumps(tables))
    broken["steps"]["3"]["noise_index"][0] = 7
    with pytest.raises(ValueError, match=r"\[noise_index\]' must be indices in \[-1, 2\)"):
        OnnxSampler(_edited(report.path, tmp_path, "sdeflow.dynamic_tables", json.dumps(broken)), providers="cpu")
    broken = json.loads(json.dumps(tables))
    broken["window"] = 3
    with pytest.raises(ValueError, match=r"'sdeflow.dynamic_tables\[window\]' must be the window"):
        OnnxSampler(_edited(report.path, tmp_path, "sdeflow.dynamic_tables", json.dumps(broken)), providers="cpu")
    with pytest.raises(ValueError, match="'sdeflow.dynamic_tables' is missing"):
        OnnxSampler(_edited(report.path, tmp_path, "sdeflow.dynamic_tables", None), providers="cpu")


def test_deterministic_graph_rejects_noise(tmp_path):
    report = export_ddim(_continuous(), tmp_path / "det.onnx", steps=S, sample_shape=(2,), verify=False)
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    with pytest.raises(ValueError, match="takes no `noise`"):
        runner.run(np.zeros((1, 2), np.float32), np.zeros((S, 1, 2), np.float32))


class _Untraceable(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.lin = kind, nn.Linear(2, 2)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        if self.kind == "op":
            return torch.special.erfcx(h)  # no ONNX equivalent
        if self.kind == "item":
            return h * float(h.abs().sum().item())  # frozen into the trace
        if self.kind == "assert":
            assert h.shape[1] == 2  # a shape assertion: benign, parity decides
            return h
        return h[:, :1]  # wrong shape


def test_export_errors(tmp_path):
    with pytest.raises(OnnxExportError, match="Could not trace the network into ONNX"):
        export_ddim(ScoreModel(_Untraceable("op"), VPSDE()), tmp_path / "a.onnx", steps=2, sample_shape=(2,))
    with pytest.raises(
        OnnxExportError, match=r"turns a tensor into a Python value while tracing at .*test_export.py:\d+"
    ):
        export_ddim(ScoreModel(_Untraceable("item"), VPSDE()), tmp_path / "b.onnx", steps=2, sample_shape=(2,))
    with pytest.raises(ValueError, match="must return a tensor of the input's shape"):
        export_ddim(ScoreModel(_Untraceable("shape"), VPSDE()), tmp_path / "c.onnx", steps=2, sample_shape=(2,))
    model = _continuous()
    with pytest.raises(ValueError, match="`sample_shape` is required"):
        export_ddim(model, tmp_path / "d.onnx", steps=2)
    with pytest.raises(TypeError, match="must be an sdeflow ScoreModel"):
        export_ddim(TinyNet(), tmp_path / "e.onnx", steps=2, sample_shape=(2,))
    with pytest.raises(ValueError, match="`eta` must lie in"):
        export_ddim(model, tmp_path / "f.onnx", steps=2, eta=1.5, sample_shape=(2,))
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        export_ddim(model, tmp_path / "g.onnx", steps=0, sample_shape=(2,))
    with pytest.raises(ValueError, match="Invalid grid"):
        export_ddim(model, tmp_path / "h.onnx", steps=2, grid="cosine", sample_shape=(2,))
    with pytest.raises(ValueError, match="Langevin corrector"):
        export_sampler(model, tmp_path / "i.onnx", "pc", steps=2, sample_shape=(2,))
    with pytest.raises(ValueError, match="torchdiffeq / torchsde solver"):
        export_sampler(model, tmp_path / "j.onnx", "ode:rk4", steps=2, sample_shape=(2,))
    with pytest.raises(ValueError, match="Option 'eta' does not apply to sampler 'unipc'"):
        export_sampler(model, tmp_path / "k.onnx", "unipc", steps=2, sample_shape=(2,), eta=0.5)
    with pytest.raises(TypeError, match="`dynamic_steps` must be None, True or a sequence"):
        export_sampler(model, tmp_path / "l.onnx", "ddim", steps=2, sample_shape=(2,), dynamic_steps="5")
    with pytest.raises(ValueError, match=r"`rtol` must be a number in \(0, 1\)"):
        export_sampler(model, tmp_path / "m.onnx", "ddim", steps=2, sample_shape=(2,), rtol=float("nan"))
    with pytest.raises(ValueError, match="`batch_sizes` must be a non-empty tuple"):
        export_sampler(model, tmp_path / "n.onnx", "ddim", steps=2, sample_shape=(2,), batch_sizes=())
    assert not any(tmp_path.iterdir())  # nothing written on failure, no temporary files left


def test_shape_assertion_is_let_through_with_its_location(tmp_path):
    report = export_ddim(ScoreModel(_Untraceable("assert"), VPSDE()), tmp_path / "a.onnx", steps=2, sample_shape=(2,))
    assert report.verified
    assert any("test_export.py" in w and "Converting a tensor" in w for w in report.tracer_warnings)


def test_failed_export_leaves_the_previous_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    first = export_sampler(_continuous(), path, "ddim", steps=3, sample_shape=(2,), batch_sizes=(1,))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="Langevin corrector"):  # bad options
        export_sampler(_continuous(), path, "pc", steps=3, sample_shape=(2,))
    with pytest.raises(OnnxExportError, match="Could not trace"):  # trace error
        export_ddim(ScoreModel(_Untraceable("op"), VPSDE()), path, steps=2, sample_shape=(2,))
    # failed verification: the graph computes something else than sdeflow.sample
    monkeypatch.setattr("sdeflow.export.verify.relative_error", lambda a, b: 1.0)
    with pytest.raises(OnnxExportError, match=r"failed verification \(the previous file there is untouched\)"):
        export_sampler(_continuous(), path, "unipc", steps=3, sample_shape=(2,), batch_sizes=(1,))
    assert path.read_bytes() == before and first.verified
    # a network that runs in float64 gets the float32 rounding scale of sdeflow.sample in the message
    mlp = ScoreModel(IntegerTimestepNet(), VPSDE(), "eps", DDPMTimesteps(1000, integer=True))
    with pytest.raises(OnnxExportError, match=r"differs from its own float64 run by 1.0e\+00 here"):
        export_sampler(mlp, path, "unipc", steps=3, sample_shape=(2,), batch_sizes=(1,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left behind


def test_traced_loop_fallback_gives_the_same_graph_output(tmp_path, monkeypatch):
    """Copying one traced network call per evaluation equals tracing the whole plan with run_plan (the fallback for
    networks with control-flow subgraphs)."""
    model = _continuous()
    args = dict(steps=S, sample_shape=(2,), batch_sizes=(7,))
    copied = export_sampler(model, tmp_path / "copied.onnx", "sde-dpmsolver++", **args)
    monkeypatch.setattr("sdeflow.export.onnx_export.has_subgraphs", lambda graph: True)
    traced = export_sampler(model, tmp_path / "traced.onnx", "sde-dpmsolver++", **args)
    assert traced.verified and copied.verified
    a, b = (OnnxSampler(r.path, providers="cpu", threads=1) for r in (copied, traced))
    x_T, noise = a.draw(7, seed=3)
    assert relative_error(a.run(x_T, noise), b.run(x_T, noise)) < 1e-6

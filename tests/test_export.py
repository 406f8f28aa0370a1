"""ONNX export of the DDIM loop: graph contract, parity with sdeflow.sample, dynamic steps, error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from sdeflow import VPSDE, DDPMTimesteps, ScoreModel
from sdeflow.export import OnnxExportError, OnnxSampler, export_ddim
from sdeflow.export.verify import relative_error
from sdeflow.sampling import DEFAULT_GRIDS, sample

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
    """A continuous-time eps model exported with eta = 0.5 (inputs x_T and noise)."""
    model = _continuous()
    path = tmp_path_factory.mktemp("onnx") / "eta.onnx"
    return model, export_ddim(model, path, steps=S, eta=0.5, sample_shape=(2,))


def test_graph_contract_inputs_outputs_metadata(stochastic):
    model, report = stochastic
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input}
    assert dims == {"x_T": ["B", 2], "noise": [S, "B", 2]}
    assert [o.name for o in proto.graph.output] == ["x_0"]
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in proto.graph.input)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["sdeflow.steps"] == str(S) and float(meta["sdeflow.eta"]) == 0.5
    assert json.loads(meta["sdeflow.sample_shape"]) == [2]
    assert json.loads(meta["sdeflow.sde"]) == model.sde.config()
    assert json.loads(meta["sdeflow.time_label"]) == {"type": "ContinuousTime"}
    assert meta["sdeflow.grid"] == DEFAULT_GRIDS["ddim"] and meta["sdeflow.set_alpha_to_one"] == "false"
    for key in ("sdeflow.version", "sdeflow.schedule", "sdeflow.spacing", "sdeflow.prediction", "sdeflow.config"):
        assert meta[key]
    assert report.checker_ok and report.shape_inference_ok and report.verified
    assert set(report.parity) == {1, 7, 64} and max(report.parity.values()) <= 1e-5


def test_eta_positive_parity_on_fresh_inputs(stochastic):
    """The graph reproduces sdeflow.sample given the same x_T and noise (independently of the export check)."""
    model, report = stochastic
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    rng = np.random.default_rng(5)
    x_T = rng.standard_normal((7, 2)).astype(np.float32)
    noise = rng.standard_normal((S, 7, 2)).astype(np.float32)
    ref = sample(model, model.sde, torch.from_numpy(x_T), steps=S, eta=0.5, noise=torch.from_numpy(noise)).samples
    assert relative_error(runner.run(x_T, noise), ref.numpy()) < 1e-5
    # the noise matters: other noise, other samples
    assert relative_error(runner.run(x_T, noise[::-1].copy()), ref.numpy()) > 1e-3


@pytest.mark.parametrize("pred", ["eps", "v", "x0"])
def test_deterministic_parity_for_each_prediction(tmp_path, pred):
    report = export_ddim(_continuous(pred), tmp_path / "m.onnx", steps=S, sample_shape=(2,), batch_sizes=(1, 7, 64))
    assert report.verified and max(report.parity.values()) <= 1e-5


def test_integer_timestep_ddpm_network(tmp_path):
    """A DDPM eps-network indexing an embedding table: the discrete schedule ('leading', abar = 1 at the end)."""
    model = ScoreModel(IntegerTimestepNet(), VPSDE(), prediction="eps", time_label=DDPMTimesteps(1000, integer=True))
    report = export_ddim(model, tmp_path / "ddpm.onnx", steps=S, eta=1.0, sample_shape=(2,))
    assert report.config["grid"] == "leading" and report.config["set_alpha_to_one"] is True
    assert report.config["label_dtype"] == "int64" and report.verified
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    x_T, noise = runner.draw(3, seed=4, steps=S)
    z = torch.from_numpy(noise)  # the graph takes S draws; sample() draws none on a last step to abar = 1
    ref = sample(model, model.sde, torch.from_numpy(x_T), steps=S, eta=1.0, noise=lambda k: z[k])
    assert ref.timesteps[:-1].tolist() == [(S - 1 - k) * (1000 // S) for k in range(S)]
    assert relative_error(runner.run(x_T, noise), ref.samples.numpy()) < 1e-5


def test_dynamic_steps_graph_runs_any_step_count(tmp_path):
    model = _continuous()
    report = export_ddim(model, tmp_path / "scan.onnx", steps=S, eta=0.3, sample_shape=(2,), dynamic_steps=True)
    proto = onnx.load(report.path)
    assert [n.op_type for n in proto.graph.node] == ["Scan"]
    assert {i.name for i in proto.graph.input} == {"x_T", "timesteps", "coefficients", "noise"}
    runner = OnnxSampler(report.path, providers="cpu", threads=1)
    for steps in (3, 11):
        x_T, noise = runner.draw(5, seed=1, steps=steps)
        z = torch.from_numpy(noise)
        ref = sample(model, model.sde, torch.from_numpy(x_T), steps=steps, eta=0.3, noise=lambda k, z=z: z[k])
        assert relative_error(runner.run(x_T, noise, steps=steps), ref.samples.numpy()) < 1e-5


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
    with pytest.raises(ValueError, match="not an sdeflow DDIM graph"):
        OnnxSampler(foreign)


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
        return h[:, :1]  # wrong shape


def test_export_errors(tmp_path):
    with pytest.raises(OnnxExportError, match="Could not trace the network into ONNX"):
        export_ddim(ScoreModel(_Untraceable("op"), VPSDE()), tmp_path / "a.onnx", steps=2, sample_shape=(2,))
    with pytest.raises(OnnxExportError, match="turns a tensor into a Python value"):
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
    assert not any(tmp_path.iterdir())  # nothing written on failure


def test_traced_loop_fallback_gives_the_same_graph_output(tmp_path, monkeypatch):
    """Copying one traced step S times equals tracing the whole loop (the fallback for steps with subgraphs)."""
    model = _continuous()
    copied = export_ddim(model, tmp_path / "copied.onnx", steps=S, eta=0.5, sample_shape=(2,), batch_sizes=(7,))
    monkeypatch.setattr("sdeflow.export.onnx_export.has_subgraphs", lambda graph: True)
    traced = export_ddim(model, tmp_path / "traced.onnx", steps=S, eta=0.5, sample_shape=(2,), batch_sizes=(7,))
    assert traced.verified and copied.verified
    a, b = (OnnxSampler(r.path, providers="cpu", threads=1) for r in (copied, traced))
    x_T, noise = a.draw(7, seed=3, steps=S)
    assert relative_error(a.run(x_T, noise), b.run(x_T, noise)) < 1e-6

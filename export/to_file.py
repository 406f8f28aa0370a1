"""Samples from an exported sampler graph, written to a file: the work of ``sdeflow run-onnx`` as a library function.

``onnx_samples_to_file('model.onnx', 'samples.png', batch=16)`` runs the graph under onnxruntime (``OnnxSampler``;
no PyTorch in the loop) and writes what the extension says (``sdeflow.images.save_samples``, atomically). Unlike the
torch-free ``runtime.py`` it uses the sdeflow package for the class lists and the pictures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .runtime import GraphInfo, OnnxSampler

__all__ = ["OnnxSampleFile", "onnx_samples_to_file"]


@dataclass(frozen=True)
class OnnxSampleFile:
    """The result of ``onnx_samples_to_file``: the file written, the number of samples, the graph's metadata
    (``info``: sampler, options, steps, sample shape), the device it ran on, the step count used, and the classes
    (sorted, distinct; None for an unguided graph) with the guidance weight."""

    path: Path
    n: int
    info: GraphInfo
    device: str
    steps: int
    classes: list[int] | None
    guidance: float

    def summary(self, model: str | Path) -> str:
        """One line (what ``sdeflow run-onnx`` prints): the samples, their shape, the graph ``model`` they came
        from, the device, the sampler, its options and steps, the classes and guidance of a guided graph, the file."""
        info = self.info
        guided = "" if self.classes is None else f", classes {self.classes}, guidance {self.guidance:g}"
        return (f"{self.n} samples {list(info.sample_shape)} from {model} on {self.device} ({info.sampler} "
                f"{info.options}, {self.steps} steps{guided}) -> {self.path}")


def onnx_samples_to_file(
    model: str | Path,
    out: str | Path,
    batch: int = 16,
    *,
    seed: int = 0,
    steps: int | None = None,
    providers: str = "auto",
    classes: int | Sequence[int] | str | None = None,
    guidance: float | None = None,
    scale: int | None = None,
    names: Mapping[str, str] | None = None,
) -> OnnxSampleFile:
    """Draw ``batch`` samples (sample i with seed + i: the x_T and noise of ``sdeflow.sample(seed=seed)``) from the
    graph ``model`` and write them to ``out`` (.npy / .npz arrays; .png / .pdf / .svg: an image grid, or 2-D points
    beside the training data the graph records). ``steps``: dynamic-steps graphs only. A guided graph needs
    ``classes`` (as ``sdeflow.conditioning.class_labels``: one class, one per sample, or a list whose length divides
    ``batch``) and takes the guidance weight ``guidance`` (default 0); an unguided graph refuses both. ``names``
    maps argument names to the names errors show (e.g. {'classes': '--class'}). ``out`` is checked before the graph
    is loaded.
    """
    from sdeflow.conditioning import check_guidance, class_labels
    from sdeflow.images import output_format, picture_extras, save_samples

    names = names or {}
    out_name, cls, g = names.get("out", "out"), names.get("classes", "classes"), names.get("guidance", "guidance")
    out = Path(out)
    output_format(out, name=out_name)
    sampler = OnnxSampler(model, providers=providers)
    info = sampler.info
    output_format(out, info.sample_shape, name=out_name)
    example = f"{cls} 3 {g} 2" if cls.startswith("-") else f"{cls}=3, {g}=2"
    labels = None
    if classes is not None:
        labels = class_labels(classes, batch, info.num_classes, cls).numpy()
    elif guidance is not None:
        raise ValueError(f"{g} needs {cls} (the classes to guide towards), e.g. {example}.")
    elif info.num_classes is not None:
        raise ValueError(f"{model} is a guided graph of {info.num_classes} classes: pass {cls} (e.g. {example}).")
    if guidance is not None:
        check_guidance(guidance, g)
    x0 = sampler.sample(batch, seed=seed, steps=steps, class_labels=labels, guidance=guidance or 0.0)
    data = json.loads(info.properties.get("sdeflow.data", "{}")) or None
    save_samples(out, x0, scale=scale, **picture_extras(out, info.sample_shape, data_info=data))
    return OnnxSampleFile(out, batch, info, sampler.device, steps or info.steps,
                          None if labels is None else sorted(set(labels.tolist())), guidance or 0.0)

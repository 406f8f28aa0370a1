"""sdeflow.export: ONNX export of a score network with a fixed-step DDIM loop, and an onnxruntime runner."""

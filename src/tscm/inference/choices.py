"""What tscm offers for running and exporting a model: the runtimes, the ONNX precisions and exporters, and the
export defaults. Light (no torch), so that the command line offers them from here without loading a runtime."""

RUNTIMES = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")
PRECISIONS = ("float32", "int8", "auto")
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
DEFAULT_CALIBRATION_IMAGES = 64

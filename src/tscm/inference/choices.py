"""What tscm offers for running and exporting a model: the runtimes, what to do with an unreadable image, the ONNX
precisions and exporters, and the export defaults. Light (no torch), so that the command line offers them from
here without loading a runtime."""

RUNTIMES = ("torch", "torch-bf16", "torch-int8", "onnx", "onnx-int8")
BAD_IMAGE_POLICIES = ("fail", "skip")  # an unreadable image stops the work, or is reported and left out
PRECISIONS = ("float32", "int8", "auto")
EXPORTERS = ("dynamo", "torchscript")
DEFAULT_OPSET = 18
DEFAULT_CALIBRATION_IMAGES = 64

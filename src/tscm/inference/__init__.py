"""Running a trained model: extraction runtimes (eager, bf16, int8, ONNX Runtime) and the ONNX graphs
they run (export, metadata, static int8). Below evaluation, so `tscm evaluate` can run any of them."""

"""Stages that turn a registered model into deployable artifacts: ONNX export, validation, optimization, engines."""

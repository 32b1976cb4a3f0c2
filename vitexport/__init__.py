"""vitexport: Vision Transformers from PyTorch to verified ONNX, optimized variants, TensorRT and Triton."""

__version__ = "0.1.0"

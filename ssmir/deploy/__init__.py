"""Deployment beyond PyTorch eager: ONNX export (``ssmir.deploy.onnx``)."""

"""Shared test settings: quiet TensorFlow, keep tests on the CPU and off ../shared."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

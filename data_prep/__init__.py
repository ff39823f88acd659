"""Offline data preparation (paper §3.1 bright images, §3.4 real pairs): inputs -> TFRecords.

Kept import-light (no TensorFlow here) so that decoding worker processes and `--help` start fast.
"""
import os

# TensorFlow's C++ start-up chatter hides the job's own progress lines.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

KINDS = ("images", "pairs", "simulated")
DEFAULT_SPLITS = "train:0.8,val:0.1,test:0.1"

"""Evaluation: inference on patch stores, metrics over slides, slide-level grading."""

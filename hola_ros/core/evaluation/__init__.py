"""Evaluation without ROS: GSM8K exact match and ARC multiple choice per decoding configuration
(AR, HSD, HSD + AdaComp-RAG, a Lo-Bi-served model, the paper's lossy entropy gate), resumable
per sample, and a Markdown/PNG report built from one run's measurements.

    answers  final-number extraction and GSM8K gold parsing
    choices  ARC items, scoring by length-normalised log-likelihood and by generated letter
    runner   configurations, the per-sample results file, summaries
    report   REPORT.md + plots from a run's measurements
"""

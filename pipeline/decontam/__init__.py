"""Evaluation-set decontamination: eval sets, their cached index, matching (`stages.decontaminate`)."""

"""The stages: one module each, holding the stage and, for a global stage, its step.
Stage code never imports Ray or Spark."""

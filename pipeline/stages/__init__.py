"""One module per stage. Stage code never imports Ray or Spark."""

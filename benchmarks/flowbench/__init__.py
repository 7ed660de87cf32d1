"""flowbench: the modules of benchmarks/run-pipeline (the whole process set benchmarked).

  common   paths, shell helpers, capture facts
  probe    one flowseal run: control block sampler, summary parser, derived figures
  peers    other flow exporters over the same capture
  runs     microbenchmarks, callgrind, idle process set, live replay
  targets  targets.yaml and the checks against it
  report   plots, medians, machine facts, the PERFORMANCE.md section
"""

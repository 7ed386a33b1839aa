"""What two or more experiment tasks share: command line and configs, the default layer rule, run epilogue, machine record, figures and the benchmark harness."""

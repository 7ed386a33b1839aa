"""What the experiment scripts share: command line, machine record, figure copies, benchmark harness and its worker processes."""

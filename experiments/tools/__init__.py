"""Record tools: the results table, the seed runner and the gradient check, which read or write the records under ``results/``."""

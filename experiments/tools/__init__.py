"""Record tools: ``results_table`` (the results page from the records), ``seeds`` (a run over seeds) and ``records`` (reading values out of records)."""

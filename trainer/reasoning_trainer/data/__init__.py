"""Problems and reasoning traces: the embedded generator, GSM8K-format files and hub datasets."""

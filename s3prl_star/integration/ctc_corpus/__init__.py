"""The `-d ctc` corpus readers the PyPI s3prl lacks (PR: `libriphone`, SF: `snips`), registered under
s3prl's names by `s3prl_star.integration.patches.ctc_corpus`."""

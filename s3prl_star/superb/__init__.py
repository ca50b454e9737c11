"""The SUPERB side: task table, corpus readers s3prl lacks, scorers, the suite driver and the score."""

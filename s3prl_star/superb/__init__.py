"""The SUPERB side: the task table, the scorers s3prl leaves out, the suite driver, results and the score."""

"""s3prl upstream folder for STaRHuBERT; `s3prl-star link-s3prl` links it into an s3prl checkout."""

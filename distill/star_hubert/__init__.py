"""s3prl pretrain expert `star_hubert`: STaR distillation of a teacher upstream into a StarHubert student."""

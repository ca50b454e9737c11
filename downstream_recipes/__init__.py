"""The SUPERB recipes, shipped inside the wheel as `s3prl_star.downstream_recipes` (read through `s3prl_star.resources`)."""

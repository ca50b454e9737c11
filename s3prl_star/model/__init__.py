"""The STaRHuBERT student: its shape (`config`), blocks (`components`), model (`star_hubert`), checkpoint
formats (`checkpoint`, and the released ones in `released`), export, fast CPU inference and profile."""
from s3prl_star.model.checkpoint import load_student, save_student
from s3prl_star.model.config import PRESETS, SAMPLE_RATE, StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert, StarHubertOutput, build_preset

__all__ = ["PRESETS", "SAMPLE_RATE", "StarHubert", "StarHubertConfig", "StarHubertOutput", "build_preset",
           "load_student", "save_student"]

"""`s3prl-star SUBCOMMAND ...`: one entry point; each subcommand lives in its own module.

Subcommands that drive s3prl's runners (`pretrain`, `downstream`) take exactly the flags
of s3prl's `run_pretrain.py` / `run_downstream.py`, so each subcommand parses its own argv.
"""
import importlib
import sys

# name -> (module, function taking argv and returning an exit code, one-line help)
SUBCOMMANDS = {
    "configs": ("s3prl_star.resources", "main", "copy the shipped distiller configs and the DATA.yaml template to edit"),
    "profile": ("s3prl_star.model.profile", "main", "parameters and SUPERB-protocol MACs of a model preset"),
    "prepare-librispeech": ("s3prl_star.distill.data", "main", "write s3prl's LibriSpeech length CSVs"),
    "corpus": ("s3prl_star.mini_superb.corpus", "main", "write the espeak-ng mini-SUPERB corpus (LibriSpeech, KS, SID, IC, ER layouts) and its DATA.yaml"),
    "pretrain": ("s3prl_star.integration.pretrain", "main", "distil a student through s3prl's pretrain runner (run_pretrain.py flags)"),
    "downstream": ("s3prl_star.integration.downstream", "main", "run s3prl's downstream runner with star_hubert registered (run_downstream.py flags)"),
    "link-s3prl": ("s3prl_star.integration.link", "main", "install (or --undo) the plugin into an s3prl git checkout"),
    "export": ("s3prl_star.model.export", "main", "export a checkpoint to TorchScript, ONNX or a Hugging Face folder"),
    "superb": ("s3prl_star.superb.driver", "main", "run the SUPERB tasks (train, choose on dev, test) and collect results.json"),
    "score": ("s3prl_star.superb.score", "main", "per-task table, Overall and SUPERB score from task outputs"),
    "teacher-pretrain": ("s3prl_star.mini_superb.teacher_pretrain", "main", "train a small HuBERT (iteration 1: masked prediction of MFCC k-means units)"),
    "demo": ("s3prl_star.mini_superb.demo", "main", "the end-to-end job on the embedded mini data set"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: s3prl-star SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"s3prl-star: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = SUBCOMMANDS[name]
    try:
        return getattr(importlib.import_module(module), function)(rest) or 0
    except ModuleNotFoundError as error:
        if error.name != "s3prl":
            raise
        from s3prl_star.integration.patches import S3PRL_MISSING

        print(f"s3prl-star {name}: {S3PRL_MISSING}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

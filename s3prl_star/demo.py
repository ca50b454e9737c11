"""`s3prl-star demo OUT`: the whole pipeline on a mini data set the demo makes itself, on CPU or GPU.

Nothing is downloaded: espeak-ng speaks a LibriSpeech-layout corpus (or `--corpus` names one made
before, for a machine without espeak-ng), the teacher is a randomly
initialised HuBERT Base-shaped model saved in the format s3prl's `hubert_local` reads (real
weights cannot be fetched offline), and the STaRHuBERT preset is distilled from it through
`s3prl-star pretrain` (s3prl's pretrain runner), profiled, and evaluated on ASR through
`s3prl-star downstream` (s3prl's downstream runner). Every step is the user-facing command, run
as a subprocess; the numbers show the pipeline works, not what a real teacher would give.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[1]
SPLITS = {"train-clean-100": 64, "dev-clean": 8, "test-clean": 8}


def run(*args: str) -> str:
    """One `s3prl-star` subcommand in a subprocess; its output is shown as it comes and returned."""
    print("\n$ s3prl-star " + " ".join(args), flush=True)
    process = subprocess.Popen([sys.executable, "-m", "s3prl_star.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = bytearray()
    while chunk := process.stdout.read1(4096):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        output += chunk
    if process.wait() != 0:
        raise SystemExit(f"demo: `s3prl-star {args[0]}` failed with exit code {process.returncode}")
    return output.decode(errors="replace")


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="s3prl-star demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the corpus, checkpoints and experiments")
    parser.add_argument("--steps", type=int, default=30, help="distillation steps (default 30)")
    parser.add_argument("--asr-steps", type=int, default=20, help="ASR downstream training steps (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--corpus", type=Path, help="a LibriSpeech-layout root holding " + ", ".join(SPLITS)
                        + " (e.g. one this demo spoke before) to use instead of speaking one: no espeak-ng needed")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.steps < 2 or args.asr_steps < 1:
        parser.error("--steps must be at least 2 (s3prl's runner logs and saves before the last step) and --asr-steps at least 1")
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: give a new folder (nothing there is overwritten)")
    if args.corpus is not None:
        missing = [split for split in SPLITS if not (args.corpus / split).is_dir()]
        if missing:
            parser.error(f"--corpus {args.corpus}: no {', '.join(missing)} folder; expected a LibriSpeech-layout "
                         f"root holding {', '.join(SPLITS)}")
    out.mkdir(parents=True, exist_ok=True)

    from s3prl_star.random_teacher import save_random_teacher
    from s3prl_star.synthetic import make_librispeech

    if args.corpus is None:
        print(f"demo: espeak-ng corpus {SPLITS} -> {out / 'LibriSpeech'}", flush=True)
        libri = make_librispeech(out / "LibriSpeech", SPLITS, seed=0)
    else:
        libri = args.corpus.resolve()
        print(f"demo: corpus {libri}", flush=True)
    run("prepare-librispeech", str(libri), "-o", str(out / "len_for_bucket"), "--splits", *SPLITS)

    teacher = out / "teacher" / "hubert_base_random.pt"
    print(f"demo: random HuBERT Base-shaped teacher -> {teacher}", flush=True)
    save_random_teacher("hubert", teacher, layers=12, embed_dim=768, ffn_dim=3072, heads=12, seed=0)

    model_config = yaml.safe_load((REPOSITORY / "distill/star_hubert/config_model.yaml").read_text())
    model_config["teacher"] = {"name": "hubert_local", "ckpt": str(teacher), "model_config": None, "layer_map": None}
    runner_config = yaml.safe_load((REPOSITORY / "distill/star_hubert/config_runner.yaml").read_text())
    runner_config["runner"].update(
        n_epochs=-1, total_steps=args.steps, gradient_accumulate_steps=1, log_step=max(args.steps // 6, 1),
        save_step=max(args.steps // 2, 1), max_keep=2,  # s3prl's runner also saves at the last step
    )
    runner_config["scheduler"]["num_warmup_steps"] = max(round(0.05 * args.steps), 1)  # the paper's 5 %
    runner_config["pretrain_expert"]["datarc"].update(
        libri_root=str(libri), file_path=str(out / "len_for_bucket"), sets=["train-clean-100"],
        train_batch_size=8, num_workers=2,
    )
    pretrain_dir = out / "pretrain"
    distillation = run(
        "pretrain", "-u", "star_hubert", "--device", args.device, "-p", str(pretrain_dir),
        "-g", str(write_yaml(out / "config_model.yaml", model_config)),
        "-c", str(write_yaml(out / "config_runner.yaml", runner_config)),
    )
    checkpoint = max(pretrain_dir.glob("states-*.ckpt"), key=lambda path: path.stat().st_mtime)

    profile = json.loads(run("profile", "star_hubert", "--json").strip().splitlines()[-1])

    asr_dir = out / "asr"
    overrides = ",,".join([
        f"config.runner.total_steps={args.asr_steps}", f"config.runner.log_step={max(args.asr_steps // 4, 1)}",
        f"config.runner.eval_step={args.asr_steps}", f"config.runner.save_step={args.asr_steps}",
        "config.downstream_expert.datarc.train_batch_size=4",
        "config.downstream_expert.datarc.batch_size=4", "config.downstream_expert.datarc.num_workers=0",
        f"config.downstream_expert.datarc.libri_root='{libri}'",
        f"config.downstream_expert.datarc.bucket_file='{out / 'len_for_bucket'}'",
        f"config.downstream_expert.datarc.dict_path='{REPOSITORY / 'downstream_recipes/asr/char.dict'}'",
    ])
    run(
        "downstream", "-m", "train", "-u", "star_hubert", "-k", str(checkpoint), "-d", "asr",
        "-c", str(REPOSITORY / "downstream_recipes/asr/config.yaml"), "-p", str(asr_dir), "--device", args.device,
        "-o", overrides,
    )
    asr_checkpoint = asr_dir / f"states-{args.asr_steps}.ckpt"
    evaluation = run("downstream", "-m", "evaluate", "-t", "test-clean", "-e", str(asr_checkpoint), "--device", args.device)
    wer = [line for line in evaluation.splitlines() if "test-clean wer" in line]

    print("\n=== demo summary ===")
    print(f"student checkpoint: {checkpoint} ({profile['params']:,} parameters, "
          f"{profile['macs'] / 1e9:.1f} G MACs on the SUPERB protocol)")
    losses = re.findall(r"loss=([0-9.e+-]+)", distillation)  # the progress bar's postfix
    if losses:
        print(f"STaR loss:          {losses[0]} at the first logged step -> {losses[-1]} at the last")
    print(f"distillation logs:  tensorboard --logdir {pretrain_dir}")
    train_utterances = len((out / "len_for_bucket" / "train-clean-100.csv").read_text().splitlines()) - 1
    print(f"ASR (random teacher, {train_utterances} utterances): {wer[-1].strip() if wer else 'no WER line'}")
    return 0

"""The s3prl pretrain expert of STaR distillation (docs/distillation.md).

s3prl's pretrain Runner builds `UpstreamPretrainExpert(datarc, upstream_config, device, multi_gpu)`,
trains `expert.model` with its own optimiser loop and calls `forward(batch)` for the loss
(s3prl/pretrain/runner.py). Here:
- `model` (`Distillation`, DDP-wrapped under torchrun) is what the runner optimises: the StarHubert
  student and the objective's parameters; the teacher is a frozen s3prl upstream (`teacher.Teacher`);
  the objective is the one config_model.yaml's `objective.kind` names (`objectives.OBJECTIVES`).
- Data: whole utterances from s3prl length CSVs in length-sorted buckets (`data`), read with
  soundfile in DataLoader workers; each pass the runner makes over the loader is the next epoch.
- Checkpoints hold `Student` ({"config", "state_dict"}, what `s3prl_star.model.load_student` reads),
  `Objective` (the objective's state dict: DistilHuBERT's heads, empty for STaR; only a resumed run
  reads it), the number of batches consumed (data order on resume) and every rank's torch RNG state.
- Precision: bf16 autocast on CUDA (`precision: bf16` in config_model.yaml), float32 on CPU.
The configs are described in `config`.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from s3prl_star.distill.config import check_datarc, load_model_config, student_config
from s3prl_star.distill.data import LengthBucketBatchSampler, WaveformDataset, collate_waveforms, load_length_csvs
from s3prl_star.distill.objectives import TeacherShape, build_objective, objective_config
from s3prl_star.distill.teacher import Teacher
from s3prl_star.integration.patches.pretrain_runner import NonFiniteLossError
from s3prl_star.model.config import StarHubertConfig
from s3prl_star.model.star_hubert import StarHubert, StarHubertOutput


class UpstreamPretrainExpert(nn.Module):
    """STaR distillation step for s3prl's pretrain Runner (the methods it asserts, plus `log_records`)."""

    def __init__(self, datarc: dict, upstream_config: str | dict, device: str = "cuda", multi_gpu: bool = False, **kwargs):
        super().__init__()
        if multi_gpu:
            raise ValueError("--multi_gpu (DataParallel) is not supported: launch with torchrun for DDP")
        self.upstream_config, source = load_model_config(upstream_config)
        self.datarc = check_datarc(datarc)
        self.rank, self.world_size = join_process_group(device)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if self.device.index is None:  # under torchrun each process takes its local GPU
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)  # the runner's later .to("cuda") then lands here too
        self.autocast = self.upstream_config["precision"] == "bf16" and self.device.type == "cuda"

        self.student = StarHubert(student_config(self.upstream_config["student"], f"{source}: student")).to(self.device)
        teacher = self.upstream_config["teacher"]
        kind, objective = objective_config(self.upstream_config["objective"], f"{source}: objective",
                                           teacher["layer_map"])
        self.teacher = Teacher.from_s3prl(teacher["name"], ckpt=teacher["ckpt"], model_config=teacher["model_config"])
        self.teacher.to(self.device)
        shape = TeacherShape(self.teacher.num_layers, self.teacher.embed_dim, self.student.config.encoder_layers,
                             self.student.config.encoder_embed_dim)
        self.kind = kind
        self.loss = build_objective(kind, objective, shape, teacher["layer_map"], source).to(self.device)
        self.teacher.need_attention = self.loss.need_attention
        self.model = Distillation(self.student, self.loss)
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=device_ids)

        csvs = [os.path.join(self.datarc["file_path"], f"{name}.csv") for name in self.datarc["sets"]]
        self.waveforms = WaveformDataset(load_length_csvs(csvs, self.datarc["libri_root"], self.datarc.get("max_length")),
                                         skip_unreadable=self.datarc.get("skip_unreadable", False))
        # run_pretrain.py seeds torch with --seed before building the expert: the data order follows it
        buckets = LengthBucketBatchSampler(
            self.waveforms.lengths, self.datarc["train_batch_size"], world_size=self.world_size, rank=self.rank,
            shuffle=True, seed=torch.initial_seed(),
        )
        self.epochs = EpochSampler(buckets)
        self.dataloader = DataLoader(
            BucketBatches(self.waveforms, buckets.batches_per_epoch),
            batch_size=None,
            sampler=self.epochs,
            num_workers=self.datarc["num_workers"],
            pin_memory=self.device.type == "cuda",
            # its own generator: creating an iterator then draws no number from torch's global RNG,
            # whose state (dropout) checkpoints restore
            generator=torch.Generator().manual_seed(0),
        )
        self.recent = deque(maxlen=20)  # (forward start time, global utterances, total loss)
        parameters = sum(p.numel() for p in self.student.parameters())
        print(f"[UpstreamPretrainExpert] - student {parameters:,} parameters; objective {self.kind}; teacher "
              f"{teacher['name']} ({self.teacher.num_layers} layers, {self.loss.description}); "
              f"rank {self.rank}/{self.world_size}")

    # --- the interface s3prl's Runner asserts -------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        return self.dataloader

    def load_model(self, init_ckpt: dict) -> None:
        """Resume: student and objective weights, the data position and every rank's RNG state."""
        saved = StarHubertConfig.from_dict(init_ckpt["Student"]["config"], source="checkpoint Student.config")
        if saved != self.student.config:
            raise ValueError(f"checkpoint student {saved} differs from the configured student {self.student.config}")
        self.student.load_state_dict(init_ckpt["Student"]["state_dict"])
        self.loss.load_state_dict(init_ckpt.get("Objective", {}))  # checkpoints before the key: STaR's, empty
        self.epochs.batches_done = init_ckpt["Data"]["batches_done"]
        rng = init_ckpt["RNG"]
        if len(rng["torch"]) != self.world_size:
            raise ValueError(f"checkpoint holds the state of {len(rng['torch'])} processes, this run has {self.world_size}: "
                             "resume with the same number of processes (the data position is per process)")
        torch.set_rng_state(rng["torch"][self.rank])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][self.rank], self.device)

    def add_state_to_save(self, all_states: dict) -> dict:
        """Called by the runner on every process at the same step, so RNG states can be gathered."""
        all_states["Student"] = {"config": self.student.config.to_dict(), "state_dict": self.student.state_dict()}
        all_states["Objective"] = self.loss.state_dict()
        all_states["Upstream_Config"] = self.upstream_config
        all_states["Data"] = {"batches_done": self.epochs.batches_done}
        all_states["RNG"] = {"torch": self._gather(torch.get_rng_state())}
        if self.device.type == "cuda":
            all_states["RNG"]["cuda"] = self._gather(torch.cuda.get_rng_state(self.device))
        return all_states

    def on_before_zero_grad(self) -> None:
        """After the runner's clipping and optimiser step: s3prl's runner only prints a NaN gradient
        norm (and skips the step); NaN or infinite gradients stop the run here instead."""
        gradients = [p.grad.detach() for p in self.model.parameters() if p.grad is not None]
        if gradients and not bool(torch.stack([g.abs().max() for g in gradients]).isfinite().all()):
            raise FloatingPointError(f"non-finite gradients after {self.epochs.batches_done} batches "
                                     "(see the gradient-norm scalar)")

    def forward(self, data: tuple[Tensor, Tensor], records: dict, global_step: int = 0, **kwargs) -> tuple[Tensor, dict]:
        """One batch: waveforms (B, S) zero-padded and lengths (B,) -> (loss to backpropagate, records)."""
        started = time.perf_counter()
        self.epochs.batches_done += 1
        waveforms, lengths = (tensor.to(self.device, non_blocking=True) for tensor in data)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            teacher = self.teacher(waveforms, lengths)
            teacher_done = self.clock()
            student, predictions = self.model(waveforms, lengths)
            student_done = self.clock()
        if not torch.equal(teacher.padding_mask, student.padding_mask):
            raise ValueError(f"teacher and student frame counts differ: {teacher.padding_mask.shape} vs "
                             f"{student.padding_mask.shape}; both need a 320-sample hop")
        sums = self.loss.batch_sums(teacher, student, predictions)
        if self.world_size > 1:  # normalise by the global batch's valid pairs (see losses.LossSums)
            for denominator in sums.denominators.values():
                dist.all_reduce(denominator)
        loss, terms = self.loss.combine(sums)
        loss_done = self.clock()

        summary = torch.stack([*terms.values(), torch.tensor(float(len(lengths)), device=self.device)])
        if self.world_size > 1:
            dist.all_reduce(summary)  # terms are numerator / global denominator: their sum is the global term
        values = dict(zip([*terms, "utterances"], summary.tolist()))
        if not all(map(math.isfinite, values.values())):
            raise NonFiniteLossError(
                f"non-finite loss {values} at step {global_step}", global_step,
                {"waveforms": waveforms.cpu(), "lengths": lengths.cpu(), "Student": self.student.state_dict()},
            )
        self.recent.append((started, values["utterances"], values["total"]))
        for name in terms:
            records[f"loss/{name}"].append(values[name])
        records["time/teacher"].append(teacher_done - started)
        records["time/student"].append(student_done - teacher_done)
        records["time/loss"].append(loss_done - student_done)
        if len(self.recent) > 1:
            records["utterances_per_second"].append(self.utterances_per_second())
        # DDP averages gradients over processes; each process's loss is its share of the global loss
        return loss * self.world_size, records

    def log_records(self, records: dict, logger, prefix: str, global_step: int, **kwargs) -> None:
        """TensorBoard scalars: the mean of every record since the last log step."""
        for key, values in records.items():
            if values:
                logger.add_scalar(f"{prefix}{key}", sum(values) / len(values), global_step=global_step)

    # --- progress ------------------------------------------------------------------------------------

    def utterances_per_second(self) -> float:
        """Over the recent steps (all processes): utterances of all but the last / their wall time."""
        (first, *_), (last, *_) = self.recent[0], self.recent[-1]
        return sum(utterances for _, utterances, _ in list(self.recent)[:-1]) / max(last - first, 1e-9)

    def progress(self) -> dict[str, str]:
        """The progress bar's postfix: the last total loss and utterances per second."""
        if not self.recent:
            return {}
        postfix = {"loss": f"{self.recent[-1][2]:.4g}"}
        if len(self.recent) > 1:
            postfix["utt/s"] = f"{self.utterances_per_second():.1f}"
        return postfix

    def clock(self) -> float:
        """Wall time once the device's queued work is done (CUDA runs asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _gather(self, state: Tensor) -> list[Tensor]:
        """Every process's copy of `state` (rank order), on the CPU."""
        if self.world_size == 1:
            return [state]
        local = state.to(self.device)
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        return [tensor.cpu() for tensor in gathered]


class Distillation(nn.Module):
    """`expert.model`, what s3prl's runner optimises (it collects `expert.model`'s parameters): the
    student and the objective's parameters (DistilHuBERT's prediction heads; STaR's have none), in one
    module so that one DDP wrapper averages all their gradients.

    forward(waveforms, lengths) -> (the student's output, the objective's `predict` of it).
    """

    def __init__(self, student: StarHubert, objective: nn.Module):
        super().__init__()
        self.student = student
        self.loss = objective

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[StarHubertOutput, Tensor | None]:
        output = self.student(waveforms, lengths, need_attention=self.loss.need_attention)
        return output, self.loss.predict(output)


class BucketBatches(Dataset):
    """Item `indices` (a bucket from the sampler) -> collated (waveforms (B, S), lengths (B,)).

    Its length is the number of batches per epoch: s3prl's runner computes the steps of a run as
    n_epochs * len(dataloader.dataset) / accumulation, as its own bucket datasets are lists of batches.
    """

    def __init__(self, waveforms: WaveformDataset, batches_per_epoch: int):
        self.waveforms = waveforms
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return collate_waveforms([self.waveforms[index] for index in indices])


class EpochSampler(Sampler[list[int]]):
    """The bucket sampler as s3prl's runner consumes it: each pass over the DataLoader starts where
    `batches_done` (batches the expert has trained on, counted over epochs) ends, so consecutive
    passes are consecutive epochs and a resumed run continues mid-epoch. (A DataLoader iterator
    calls `iter()` on its sampler more than once, so nothing may be counted here.)"""

    def __init__(self, buckets: LengthBucketBatchSampler):
        self.buckets = buckets
        self.batches_done = 0

    def __len__(self) -> int:
        return self.buckets.batches_per_epoch

    def __iter__(self):
        epoch, start = divmod(self.batches_done, self.buckets.batches_per_epoch)
        self.buckets.set_epoch(epoch)
        self.buckets.set_start(start)
        return iter(self.buckets)


def join_process_group(device: str) -> tuple[int, int]:
    """(rank, world size): joins torchrun's process group (NCCL on CUDA, gloo on CPU); (0, 1) alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()



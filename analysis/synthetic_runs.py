"""Write synthetic run folders with known numbers, exactly as docs/run_folder.md describes them.

For tests of the analysis (and of anything else that reads run folders). Every value is a simple function of the
spec, so a test can state the expected table entries by hand:
* train accuracy is 0.1 before `learn_step` and 0.8 from it on (train loss 2.0, then 0.8); with the 10-line
  trailing mean it first reaches 0.3 / 0.4 / 0.5 at learn_step + 2 / + 4 / + 5;
* eval lines every `eval_every` steps: top-1 0.1 before learn_step, `top1` (0.75) from it on (top-5 = top-1 + 0.2);
* from `death_step` on: z = 0.999, dead-channel fraction 0.9, loss ln C, accuracy 0.1 (else z = 0.5, 0.05);
* from `limp_step` on (after a death): z = 0.982, loss 2.255, accuracy 0.1, eval top-1 `limp_top1`: issue #30's
  unscaled 640-filter runs, whose last window is no longer dead but which never recovered; verdict.json says
  transient_death, as training wrote it before docs/dying.md §3's final-evaluation rule;
* at `diverge_step` the loss is NaN and the log ends there (verdict.json says diverged; no result.json);
* `time` = step × seconds_per_step; block_ratio = 0.3 per block (50 in the last block after death);
  learnable scales: block b (from 0) of every stage = 0.1·(b + 1) + 0.001·step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NUM_CLASSES = 10
STAGE_BLOCKS = {"a": 2, "b": 2, "c": 2}


@dataclasses.dataclass(frozen=True)
class SyntheticRun:
    run_id: str
    width: int
    variant: str  # "plain" | "scale=<s>" | "learnable"
    seed: int = 0
    dataset: str = "shapes_textures"
    model: str = "inception_resnet_v2"
    num_steps: int = 60
    learn_step: int | None = 20  # None: never learns
    top1: float = 0.75  # eval top-1 once learned
    death_step: int | None = None
    limp_step: int | None = None  # after death_step: zero fraction just under 0.99, loss and accuracy at chance
    limp_top1: float = 0.142
    diverge_step: int | None = None
    eval_every: int | None = None
    seconds_per_step: float = 0.5
    finished: bool = True  # False: a run still being written (no result.json, no verdict.json)
    write_verdict: bool = True
    truncated_tail: bool = False  # metrics.jsonl ends in half a line, as a run being written leaves it

    @property
    def is_residual(self) -> bool:
        return self.variant != "plain"

    def verdict(self) -> str:
        if self.diverge_step is not None:
            return "diverged"
        if self.limp_step is not None:
            return "transient_death"
        return "died" if self.death_step is not None else "healthy"

    def config(self) -> dict[str, Any]:
        scale = float(self.variant.split("=")[1]) if self.variant.startswith("scale=") else 1.0
        widths = {"a": self.width // 4, "b": self.width // 2, "c": self.width}
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "model": {"name": self.model, "width_multiplier": self.width / 2080, "use_residual": self.is_residual,
                      "residual_scale": scale,
                      "residual_scale_mode": "learnable" if self.variant == "learnable" else "constant"},
            "data": {"name": self.dataset, "image_size": 75},
            "train": {"optimizer": "sgd", "learning_rate": 0.1, "batch_size": 64, "num_steps": self.num_steps,
                      "workdir": f"/tmp/{self.run_id}"},
            "derived": {"stage_widths": widths, "deepest_width": self.width, "variant": self.variant,
                        "num_params": 1000 * self.width, "num_classes": NUM_CLASSES, "steps_per_epoch": 20},
            "sweep": {"name": "synthetic", "row": self.run_id, "overrides": {"seed": self.seed}},
        }

    def _dead(self, step: int) -> bool:
        return self.death_step is not None and step >= self.death_step and not self._limp(step)

    def _limp(self, step: int) -> bool:
        return self.limp_step is not None and step >= self.limp_step

    def _learned(self, step: int) -> bool:
        return (self.learn_step is not None and step >= self.learn_step and not self._dead(step)
                and not self._limp(step))

    def train_line(self, step: int) -> dict[str, Any]:
        dead, learned, limp = self._dead(step), self._learned(step), self._limp(step)
        loss = math.log(NUM_CLASSES) if dead else (0.8 if learned else 2.0)
        if limp:
            loss = 2.255
        if self.diverge_step is not None and step >= self.diverge_step:
            loss = math.nan
        line = {"step": step, "split": "train", "time": step * self.seconds_per_step, "epoch": step / 20,
                "loss": loss, "accuracy": 0.8 if learned else 0.1, "lr": 0.1, "loss_finite": int(math.isfinite(loss)),
                "prepool_zero_frac": 0.999 if dead else 0.982 if limp else 0.5,
                "prepool_dead_chan_frac": 0.9 if dead else 0.05,
                "grad_norm": 1.0, "images_per_sec": 128.0, "unknown_future_key": {"nested": [1, 2]}}
        for stage, blocks in STAGE_BLOCKS.items():
            line[f"block_zero_frac/{stage}"] = [0.5] * blocks
            if self.is_residual:
                last = 50.0 if dead and stage == "c" else 0.3
                line[f"block_ratio/{stage}"] = [0.3] * (blocks - 1) + [last]
            if self.variant == "learnable":
                line[f"residual_scale/{stage}"] = [0.1 * (b + 1) + 0.001 * step for b in range(blocks)]
        return line

    def eval_line(self, step: int) -> dict[str, Any]:
        top1 = self.top1 if self._learned(step) else self.limp_top1 if self._limp(step) else 0.1
        return {"step": step, "split": "eval", "time": step * self.seconds_per_step, "epoch": step / 20,
                "loss": 1.0 if self._learned(step) else 2.3, "top1": top1, "top5": top1 + 0.2, "num_examples": 1024}

    def lines(self) -> list[dict[str, Any]]:
        last = self.diverge_step if self.diverge_step is not None else self.num_steps
        out = []
        for step in range(1, last + 1):
            out.append(self.train_line(step))
            if self.eval_every and step % self.eval_every == 0:
                out.append(self.eval_line(step))
        return out


def write_run(runs_dir: Path, spec: SyntheticRun) -> Path:
    """One run folder under runs_dir."""
    folder = Path(runs_dir) / spec.run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(spec.config(), indent=1))
    lines = spec.lines()
    text = "".join(json.dumps(line) + "\n" for line in lines)  # json writes NaN for the diverged loss
    if spec.truncated_tail:
        text += '{"step": 999, "split": "train", "loss": 0.'
    (folder / "metrics.jsonl").write_text(text)
    if not spec.finished:
        return folder
    last = lines[-1]["step"]
    verdict = {"verdict": spec.verdict(), "t_death": spec.death_step if spec.verdict() == "died" else None,
               "final_zero_frac": spec.train_line(last)["prepool_zero_frac"],
               "final_loss": spec.train_line(last)["loss"], "window": 10, "definition": "docs/dying.md, K = 10"}
    if spec.write_verdict:
        (folder / "verdict.json").write_text(json.dumps(verdict))
    if spec.diverge_step is None:
        evals = [line for line in lines if line["split"] == "eval"]
        final = spec.train_line(last)
        result = {"run_id": spec.run_id, "steps": last, "wall_time_s": last * spec.seconds_per_step,
                  "final_train_loss": final["loss"], "final_train_accuracy": final["accuracy"],
                  "eval_loss": evals[-1]["loss"] if evals else None,
                  "eval_top1": evals[-1]["top1"] if evals else None, "eval_top5": evals[-1]["top5"] if evals else None,
                  "ema_eval_top1": None, "ema_eval_top5": None, "verdict": verdict["verdict"],
                  "t_death": verdict["t_death"]}
        (folder / "result.json").write_text(json.dumps(result))
    return folder


def write_sweep(sweep_dir: Path, specs: Sequence[SyntheticRun], *, missing: Sequence[str] = ()) -> Path:
    """A sweep folder (sweep.json + runs/); `missing` run ids are listed in sweep.json but get no folder."""
    sweep_dir = Path(sweep_dir)
    (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    command = "python -m inception_jax.main --config=configs/ablation_scale.py --rows_csv=synthetic.csv"
    sweep = {"name": "synthetic", "command": command,
             "run_ids": [s.run_id for s in specs] + list(missing), "created": "2025-01-01T00:00:00+00:00"}
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep))
    for spec in specs:
        write_run(sweep_dir / "runs", spec)
    return sweep_dir


def example_specs() -> list[SyntheticRun]:
    """The sweep the analysis tests use; the sweep.json written by write_sweep may add missing ids.

    Group "shapes_textures" (no eval lines; 60 steps of 0.5 s), by filter count:
    * 64: plain learns at 40; scale=0.1 seeds 0 and 1 learn at 10 and 14; scale=0.3 is partial (no result.json);
      scale=1.0 learns at 15 and its metrics.jsonl ends in a truncated line; learnable learns at 12.
    * 256: plain never learns; scale=0.1 learns at 10; scale=0.3 at 11; scale=1.0 seeds 0 and 1 die at 12 and 14,
      seed 2 learns at 15 and diverges at 30 (no result.json); learnable learns at 12 and has no verdict.json.
    Group "imagenet2012" (eval every 10 steps), filter count 512: plain learns at 33, scale=0.1 at 13.
    """
    shapes = [
        SyntheticRun("w64_plain", 64, "plain", learn_step=40),
        SyntheticRun("w64_s0.1_seed0", 64, "scale=0.1", learn_step=10),
        SyntheticRun("w64_s0.1_seed1", 64, "scale=0.1", seed=1, learn_step=14),
        SyntheticRun("w64_s0.3_partial", 64, "scale=0.3", finished=False),
        SyntheticRun("w64_s1.0", 64, "scale=1.0", learn_step=15, truncated_tail=True),
        SyntheticRun("w64_learnable", 64, "learnable", learn_step=12),
        SyntheticRun("w256_plain", 256, "plain", learn_step=None),
        SyntheticRun("w256_s0.1", 256, "scale=0.1", learn_step=10),
        SyntheticRun("w256_s0.3", 256, "scale=0.3", learn_step=11),
        SyntheticRun("w256_s1.0_seed0", 256, "scale=1.0", death_step=12),
        SyntheticRun("w256_s1.0_seed1", 256, "scale=1.0", seed=1, death_step=14),
        SyntheticRun("w256_s1.0_seed2", 256, "scale=1.0", seed=2, learn_step=15, diverge_step=30),
        SyntheticRun("w256_learnable", 256, "learnable", learn_step=12, write_verdict=False),
    ]
    imagenet = [
        SyntheticRun("inet_plain", 512, "plain", dataset="imagenet2012", eval_every=10, learn_step=33),
        SyntheticRun("inet_s0.1", 512, "scale=0.1", dataset="imagenet2012", eval_every=10, learn_step=13),
    ]
    return shapes + imagenet


def default_job_specs(seeds: Sequence[int] = (0, 1, 2, 3, 4), *, flip: bool = False) -> list[SyntheticRun]:
    """A sweep shaped like the main job's default, with known claims (eval every 10 of 60 steps, one run per seed;
    by the seed's position, repeating: j = 0, +0.02, -0.01, +0.03, +0.01; r = +0.01, +0.03, -0.02, 0.00, +0.02;
    seeds differ as real ones do, so no claim rests on identical values):
    * plain learns at step 30 (at 40 in the fourth seed), top-1 0.50 + j, at 160 and 640 filters;
    * scale=0.3 learns at 10 (at 20 in the third seed), top-1 0.70 + r (with `flip`, 0.45 + r at 640: below plain
      there);
    * scale=1.0 at 160 learns at 20, top-1 0.50 + k (k = +0.03, -0.02, +0.01, -0.03, 0.00: within plain's noise);
      at 640 it dies at step 12 in every seed, and the first two seeds are issue #30's never-recovered runs (from
      step 40 zero fraction 0.982, loss 2.255, eval top-1 0.142 and 0.094; verdict.json transient_death).
    """
    jitter, other = (0.0, 0.02, -0.01, 0.03, 0.01), (0.03, -0.02, 0.01, -0.03, 0.0)
    scaled = (0.01, 0.03, -0.02, 0.0, 0.02)
    specs = []
    for i, seed in enumerate(seeds):
        j, k, r = jitter[i % 5], other[i % 5], scaled[i % 5]
        scaled_learns = 20 if i % 5 == 2 else 10

        def run(width: int, variant: str, seed: int = seed, **kw: Any) -> SyntheticRun:
            return SyntheticRun(f"w{width}_{variant}_seed{seed}", width, variant, seed=seed, eval_every=10, **kw)

        plain_learns = 40 if i % 5 == 3 else 30
        specs += [run(160, "plain", learn_step=plain_learns, top1=0.50 + j),
                  run(640, "plain", learn_step=plain_learns, top1=0.50 + j),
                  run(160, "scale=0.3", learn_step=scaled_learns, top1=0.70 + r),
                  run(640, "scale=0.3", learn_step=scaled_learns, top1=(0.45 if flip else 0.70) + r),
                  run(160, "scale=1.0", learn_step=20, top1=0.50 + k)]
        limp = {0: 0.142, 1: 0.094}.get(i)
        specs.append(run(640, "scale=1.0", learn_step=None, death_step=12, limp_step=40 if limp else None,
                         limp_top1=limp or 0.142))
    return specs

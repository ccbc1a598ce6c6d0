"""The batched multi-job LUT optimizer: every active job advances one step per CLIP forward/backward.

Each job owns its LUT parameters, Adam state, random generator, prompts, image and loss weights. The
shared work is one image forward and backward over all jobs' views; the loss is a sum of per-job
losses, so a job's gradient depends only on its own inputs and seed, never on its batch-mates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, NamedTuple

import torch
from PIL import Image
from pydantic import Field
from torch.optim.adam import adam

from clipdlut import skin
from clipdlut.guidance import Guide, series_views
from clipdlut.imaging import thumbnail
from clipdlut.limits import MAX_PHOTOS
from clipdlut.losses import TERMS, Inputs, LossWeights, lab_stats
from clipdlut.lut import apply, check_size, identity, resample
from clipdlut.mono import neutral
from clipdlut.options import DEFAULT_LR, DEFAULT_LUT_SIZE, DEFAULT_SOURCE_PROMPT, DEFAULT_STEPS, MODES, Mode
from clipdlut.safety import make_safe
from clipdlut.status import JobStatus
from clipdlut.tensors import to_image, to_tensor

log = logging.getLogger(__name__)



@dataclass
class JobState:
    """Everything a job carries from one step to the next: resuming from it continues the same run."""

    iteration: int
    delta: torch.Tensor  # LUT minus identity (1, 3, N, N, N), CPU float32
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    adam_step: float
    rng_state: torch.Tensor  # the view generator's state (torch.Generator.get_state)


@dataclass
class JobSpec:
    """Everything one job's result depends on."""

    job_id: str
    image: Image.Image | Sequence[Image.Image]  # one photo, or a series that gets one LUT (views drawn across all)
    target_prompt: str  # may be empty when there is a reference photo
    source_prompt: str = DEFAULT_SOURCE_PROMPT
    steps: int = DEFAULT_STEPS
    lut_size: int = DEFAULT_LUT_SIZE
    lr: float = DEFAULT_LR
    seed: int = 0
    views: int = 4
    weights: LossWeights = field(default_factory=LossWeights)
    progress_every: int = 10
    preview: bool = False
    init_noise: float = 1e-3
    keep_blacks: bool = False  # the LUT maps black to black exactly
    keep_whites: bool = False  # the LUT maps white to white exactly
    protect_skin: bool = False  # skin tones keep the bound of clipdlut.skin exactly
    resume: JobState | None = None  # start from this state instead of the seeded start
    reference: Image.Image | None = None  # a photo whose look to aim for (features and L*a*b* colour statistics)
    start: torch.Tensor | None = None  # a LUT (1, 3, M, M, M) to start from instead of the identity (refining)
    mode: Mode = "color"  # "bw": a neutral LUT (clipdlut.mono)

    @property
    def photos(self) -> list[Image.Image]:
        return [self.image] if isinstance(self.image, Image.Image) else list(self.image)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        check_size(self.lut_size)
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.progress_every < 1:
            raise ValueError(f"progress_every must be at least 1, got {self.progress_every}")
        if not self.source_prompt.strip():
            raise ValueError("source_prompt is empty")
        if not self.target_prompt.strip() and self.reference is None:
            raise ValueError("target_prompt is empty (and there is no reference photo to aim for instead)")
        if not 1 <= len(self.photos) <= MAX_PHOTOS:
            raise ValueError(f"a job takes 1 to {MAX_PHOTOS} photos, got {len(self.photos)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.protect_skin:
            skin.check(self.mode)
        if self.start is not None:
            got = tuple(self.start.shape)
            if self.start.ndim != 5 or got[:2] != (1, 3) or len(set(got[2:])) != 1:
                raise ValueError(f"the LUT to start from must have shape (1, 3, M, M, M), got {got}")
            check_size(int(got[-1]))
        if self.resume is not None:
            shape = (1, 3, self.lut_size, self.lut_size, self.lut_size)
            if tuple(self.resume.delta.shape) != shape or not 0 <= self.resume.iteration < self.steps:
                got = tuple(self.resume.delta.shape)
                raise ValueError(f"the state to resume from does not fit this job (LUT {got}, "
                                 f"iteration {self.resume.iteration} of {self.steps})")


@dataclass
class Scores:
    """Cosine similarities in Chinese-CLIP space on the whole working image: how far the grade moved toward the
    target. (The API's result reports it as is: the descriptions are its documentation.)"""

    source_target: Annotated[float, Field(description="similarity of the photo as the job started (the original; "
                                                      "refining: graded by the LUT refined) to the target (the "
                                                      "prompt, or the reference photo without one)")]
    result_target: Annotated[float, Field(description="similarity of the graded photo to the target")]
    directional: Annotated[float, Field(description="cosine between the photo's edit and the source->target "
                                                    "direction (a series: means over its photos)")]


@dataclass
class Progress:
    job_id: str
    iteration: int
    total: int
    loss: float
    terms: dict[str, float]
    preview: Image.Image | None = None


@dataclass
class JobResult:
    job_id: str
    status: JobStatus
    iterations: int
    seconds: float
    lut: torch.Tensor | None = None  # (1, 3, N, N, N), CPU float32
    scores: Scores | None = None
    loss: float | None = None
    error: str | None = None
    retryable: bool = False  # failed for a reason of the process running it, not of the job: another may succeed


def _weights(spec: JobSpec) -> dict[str, float]:
    """The weights a job's objective uses: the reference terms only with a reference photo ("reference" only with
    a prompt as well: without one the prompt terms aim at the reference already)."""
    w = dict(spec.weights)
    if spec.reference is None or not spec.target_prompt.strip():
        w["reference"] = 0.0
    if spec.reference is None:
        w["reference_color"] = 0.0
    return w


class _Job:
    def __init__(self, spec: JobSpec, device: torch.device):
        self.spec = spec
        self.started = time.perf_counter()
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.images = [to_tensor(p).to(device) for p in spec.photos]
        self.image = self.images[0]  # (the preview's photo)
        self.preview_base = to_tensor(thumbnail(spec.photos[0])).to(device) if spec.preview else None
        self.reference = to_tensor(spec.reference).to(device) if spec.reference is not None else None
        n = spec.lut_size
        self.identity = identity(n, device=device)
        noise = torch.randn(1, 3, n, n, n, generator=self.generator) * spec.init_noise
        if spec.start is not None:  # (no noise: the first step starts at that LUT exactly)
            noise = resample(spec.start.detach().float().cpu(), n) - self.identity.cpu()
        self.delta = noise.to(device).requires_grad_(True)
        # the look the job starts from, when it is not the photo itself: the LUT it refines, or the plain
        # black-and-white conversion; its direction and its colour terms are measured from the photo graded by it
        self.base = self.lut().detach().clone() if spec.start is not None or spec.mode == "bw" else None
        # Adam state, stepped for many jobs at once by :func:`_adam_step`
        self.exp_avg = torch.zeros_like(self.delta)
        self.exp_avg_sq = torch.zeros_like(self.delta)
        self.adam_step = torch.zeros(())
        self.iteration = 0
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.cancelled = False
        self.failure: str | None = None  # set when the job is stopped for a reason (it then ends failed)
        self.weights = _weights(spec)
        self.last_loss = torch.zeros((), device=device)
        self.last_terms = torch.zeros(len(TERMS), device=device)  # the values of the terms, in the order of TERMS
        # set at admission (one batched text and image forward for all the jobs admitted together):
        self.target: torch.Tensor  # the target prompt's features, or the reference photo's (D,)
        self.text_dir: torch.Tensor  # target minus source (prompt features, or the photos' without a prompt) (D,)
        self.src_feat: torch.Tensor  # the source photos' views and wholes, averaged (D,)
        self.src_full_feats: torch.Tensor  # each whole source photo (K, D); graded by the start LUT when refining
        self.ref_feat = torch.zeros((), device=device)  # the reference photo's features (D,) (zeros: none)
        self.ref_stats = torch.zeros(6, device=device)  # its L*a*b* statistics (losses.lab_stats)
        # on the device once, so that a step never copies from the host
        self.term_weights = torch.tensor([self.weights[name] for name in TERMS], device=device)

    def lut(self) -> torch.Tensor:
        lut = self.identity + self.delta
        return neutral(lut) if self.spec.mode == "bw" else lut

    def safe(self, luts: torch.Tensor) -> torch.Tensor:
        """``luts`` repaired to satisfy the colour-safety guarantees with this job's pins."""
        n = luts.shape[-1]
        return make_safe(luts, keep_blacks=self.spec.keep_blacks, keep_whites=self.spec.keep_whites,
                         neutral=self.spec.mode == "bw",
                         fences=skin.fences(n, luts.dtype, luts.device) if self.spec.protect_skin else None)

    def views(self, size: int) -> torch.Tensor:
        """This step's views, drawn across the job's photos."""
        return series_views(self.images, self.spec.views, size, self.generator)

    def from_base(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` as the job's starting look shows them (themselves, without one)."""
        if self.base is None:
            return images
        return apply(self.base.expand(len(images), -1, -1, -1, -1), images)

    def state(self) -> JobState:
        return JobState(self.iteration, self.delta.detach().cpu().clone(), self.exp_avg.cpu().clone(),
                        self.exp_avg_sq.cpu().clone(), float(self.adam_step), self.generator.get_state())

    def restore(self, state: JobState) -> None:
        """Continue from ``state`` (after the seeded start has drawn the source views, as the first run did)."""
        device = self.delta.device
        self.iteration = state.iteration
        self.delta = state.delta.to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        self.exp_avg = state.exp_avg.to(device=device, dtype=torch.float32).clone()
        self.exp_avg_sq = state.exp_avg_sq.to(device=device, dtype=torch.float32).clone()
        self.adam_step = torch.tensor(float(state.adam_step))
        self.generator.set_state(state.rng_state)


def _apply_to_views(luts: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """LUTs ``(G, 3, N, N, N)`` on their jobs' views ``(G, V, 3, R, R)`` with one ``grid_sample``: each job's
    views are stacked into one tall image."""
    g, v, c, h, w = views.shape
    tall = views.permute(0, 2, 1, 3, 4).reshape(g, c, v * h, w)
    return apply(luts, tall).reshape(g, c, v, h, w).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def _adam_step(jobs: Sequence[_Job]) -> None:
    """One Adam update of every job's LUT: torch's own multi-tensor Adam, one call per learning rate
    (each job keeps its own moments and step count, so this equals a ``torch.optim.Adam`` per job)."""
    by_lr: dict[float, list[tuple[_Job, torch.Tensor]]] = {}
    for job in jobs:
        if job.delta.grad is not None:
            by_lr.setdefault(job.spec.lr, []).append((job, job.delta.grad))
    for lr, pairs in by_lr.items():
        group = [j for j, _ in pairs]
        adam([j.delta for j in group], [grad for _, grad in pairs], [j.exp_avg for j in group],
             [j.exp_avg_sq for j in group], [], [j.adam_step for j in group], foreach=True, amsgrad=False,
             beta1=0.9, beta2=0.999, lr=lr, weight_decay=0.0, eps=1e-8, maximize=False)
        for job in group:
            job.delta.grad = None


@torch.no_grad()
def _make_safe(jobs: Sequence[_Job]) -> None:
    """Repair every job's LUT after its update (jobs with the same size and pins in one call), so the guidance
    only ever sees, and a job only ever returns, LUTs that satisfy the colour-safety guarantees."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        key = (job.spec.lut_size, job.spec.keep_blacks, job.spec.keep_whites, job.spec.protect_skin, job.spec.mode)
        groups.setdefault(key, []).append(job)
    for group in groups.values():
        ident = group[0].identity
        safe = group[0].safe(torch.cat([j.lut() for j in group])) - ident
        for job, delta in zip(group, safe):
            job.delta.copy_(delta.unsqueeze(0))


class _Group(NamedTuple):
    """Jobs stepped together (one LUT size, one view count): their LUTs, views and graded views, stacked."""

    jobs: list[_Job]
    luts: torch.Tensor
    src: torch.Tensor
    out: torch.Tensor


class BatchedOptimizer:
    """A set of active jobs stepped together; jobs join between steps and leave when they end."""

    def __init__(self, guide: Guide, on_progress: Callable[[Progress], None] | None = None,
                 safe_each_step: bool = False):
        """The LUT a job returns, and its previews, are repaired to keep the colour-safety guarantees
        (:mod:`clipdlut.safety`); ``safe_each_step`` repairs after every update as well. Measured in
        ``bench/safety.py``: that costs the guidance as much as the repair at the end and steps several times
        slower on a CPU, so it is off."""
        self.guide = guide
        self.on_progress = on_progress
        self.safe_each_step = safe_each_step
        self._jobs: dict[str, _Job] = {}
        self.last_batch_size = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def active_ids(self) -> list[str]:
        return list(self._jobs)

    def _end(self, job: _Job, status: JobStatus, error: str | None = None) -> JobResult:
        """The one way a job ends without a LUT (cancelled, timed out, failed): it leaves the batch now."""
        self._jobs.pop(job.spec.job_id, None)
        if status == JobStatus.FAILED:
            log.warning("job %s failed at iteration %d: %s", job.spec.job_id, job.iteration, error)
        return JobResult(job.spec.job_id, status, job.iteration, time.perf_counter() - job.started, error=error)

    def _fail(self, job: _Job, error: str) -> JobResult:
        return self._end(job, JobStatus.FAILED, error)

    @torch.no_grad()
    def add(self, specs: Sequence[JobSpec]) -> list[JobResult]:
        """Admit jobs; they start at the next :meth:`step`. Returns those that failed admission.

        Prompts and each job's source image are encoded here, once per job, in one batched forward.
        """
        failed: list[JobResult] = []
        admitted: list[_Job] = []
        for spec in specs:
            if spec.job_id in self._jobs:
                failed.append(JobResult(spec.job_id, JobStatus.FAILED, 0, 0.0,
                                        error="a job with this id is already running"))
                continue
            try:
                spec.validate()
                admitted.append(_Job(spec, self.guide.device))
            except Exception as e:
                failed.append(JobResult(spec.job_id, JobStatus.FAILED, 0, 0.0, error=f"invalid job: {e}"))
        if not admitted:
            return failed
        try:
            prompts = [p for j in admitted for p in (j.spec.target_prompt, j.spec.source_prompt) if p.strip()]
            text = dict(zip(prompts, self.guide.encode_text(prompts))) if prompts else {}
            pixels = [self._source_pixels(j) for j in admitted]
            feats = self.guide.encode_pixels(torch.cat(pixels)).split([p.shape[0] for p in pixels])
        except Exception as e:
            log.exception("admission of %d jobs failed", len(admitted))
            return failed + [JobResult(j.spec.job_id, JobStatus.FAILED, 0, 0.0, error=f"could not encode the job: {e}")
                             for j in admitted]
        for job, f in zip(admitted, feats):
            k = len(job.images)
            job.src_full_feats = f[:k]
            job.src_feat = torch.nn.functional.normalize(f[:k + job.spec.views].mean(0), dim=-1)
            job.ref_feat = f[-1] if job.reference is not None else torch.zeros_like(f[0])
            if job.reference is not None:
                job.ref_stats = lab_stats(job.reference.unsqueeze(0))[0]
            if job.spec.target_prompt.strip():
                job.target = text[job.spec.target_prompt]
                job.text_dir = job.target - text[job.spec.source_prompt]
            else:  # a reference photo alone: aim at its features, in the direction from the photos' own
                job.target = job.ref_feat
                job.text_dir = job.ref_feat - torch.nn.functional.normalize(job.src_full_feats.mean(0), dim=-1)
            if job.spec.resume is not None:
                try:
                    job.restore(job.spec.resume)
                except Exception as e:
                    failed.append(JobResult(job.spec.job_id, JobStatus.FAILED, 0, 0.0,
                                            error=f"invalid job: the state to resume from is broken: {e}"))
                    continue
            self._jobs[job.spec.job_id] = job
        return failed

    def _source_pixels(self, job: _Job) -> torch.Tensor:
        """A job's model inputs at admission: each whole photo, its first views, then its reference photo. The
        photos as the job's starting look shows them (refining, black and white: the direction is from that look)."""
        parts = [self.guide.preprocess(job.from_base(img.unsqueeze(0))) for img in job.images]
        parts.append(self.guide.normalize(job.from_base(job.views(self.guide.resolution))))
        if job.reference is not None:
            parts.append(self.guide.preprocess(job.reference.unsqueeze(0)))
        return torch.cat(parts)

    def state(self, job_id: str) -> JobState:
        """An active job's state, copied to the CPU: send it along and the job can resume anywhere."""
        return self._jobs[job_id].state()

    def cancel(self, job_id: str, failure: str | None = None) -> bool:
        """Stop a job at the next :meth:`step`: it ends cancelled, or failed with ``failure`` as the reason
        (a timeout, say). False if it is not active."""
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancelled = True
        job.failure = failure
        return True

    def _group_loss(self, jobs: list[_Job], luts: torch.Tensor, src: torch.Tensor, out: torch.Tensor,
                    feats: torch.Tensor) -> torch.Tensor:
        """The sum of a group's per-job losses (each job weighs the terms its own way); keeps each job's
        loss and terms for its reports. Terms no job in the group weighs are not computed. The image terms compare
        the graded views with the views as each job's starting look shows them."""
        if any(j.base is not None for j in jobs):
            src = torch.stack([j.from_base(views) for j, views in zip(jobs, src)])
        inputs = Inputs(luts, src, out, feats, torch.stack([j.src_feat for j in jobs]),
                        torch.stack([j.text_dir for j in jobs]), torch.stack([j.target for j in jobs]),
                        torch.stack([j.ref_feat for j in jobs]), torch.stack([j.ref_stats for j in jobs]))
        columns = [term.fn(inputs) if any(j.weights[name] for j in jobs) else luts.new_zeros(len(jobs))
                   for name, term in TERMS.items()]
        terms = torch.stack(columns, dim=1)  # (G, terms)
        per_job = (torch.stack([j.term_weights for j in jobs]) * terms).sum(1)
        detached, kept = per_job.detach(), terms.detach()
        bad = ~torch.isfinite(detached)
        for i, job in enumerate(jobs):
            job.last_loss, job.last_terms = detached[i], kept[i]
            job.nonfinite |= bad[i]
        return per_job.sum()

    def step(self) -> list[JobResult]:
        """Advance every active job by one iteration; returns the jobs that ended in this call.

        Jobs with the same LUT size and view count form a group whose LUTs, views and loss terms are
        stacked tensors: a step's cost grows with the pixels and features it handles, not with a Python
        loop over jobs. Plan the groups, run them (one CLIP forward, one backward, one Adam update), then update
        each job (its report, its end).
        """
        self.last_batch_size = 0
        ended = [self._end_cancelled(j) for j in list(self._jobs.values()) if j.cancelled]
        groups = self._plan(ended)
        if not groups:
            return ended
        self.last_batch_size = sum(len(g.jobs) for g in groups)
        stepped = self._run(groups, ended)
        return ended + self._update(stepped)

    def _plan(self, ended: list[JobResult]) -> list[_Group]:
        """This step's groups, their views graded by each job's current LUT (a job that cannot join ends)."""
        members: dict[tuple[int, int], list[tuple[_Job, torch.Tensor]]] = {}
        for job in list(self._jobs.values()):
            try:
                src = job.views(self.guide.resolution)
            except Exception as e:
                ended.append(self._fail(job, f"error preparing the step: {e}"))
                continue
            members.setdefault((job.spec.lut_size, job.spec.views), []).append((job, src))
        groups = []
        for group in members.values():
            jobs = [job for job, _ in group]
            try:
                luts = torch.cat([job.lut() for job in jobs])
                src = torch.stack([views for _, views in group])
                groups.append(_Group(jobs, luts, src, _apply_to_views(luts, src)))
            except Exception as e:
                ended.extend(self._fail(job, f"error preparing the step: {e}") for job in jobs)
        return groups

    def _run(self, groups: list[_Group], ended: list[JobResult]) -> list[_Job]:
        """One forward of every group's views, each group's loss, one backward and update: the jobs stepped."""
        try:
            pixels = torch.cat([g.out.flatten(0, 1) for g in groups])
            feats = self.guide.encode_pixels(self.guide.normalize(pixels))
        except Exception as e:  # shared work: every job in it is affected
            log.exception("CLIP forward failed for a batch of %d jobs", self.last_batch_size)
            ended.extend(self._fail(job, f"CLIP forward failed: {e}") for g in groups for job in g.jobs)
            return []
        total = None
        stepped: list[_Job] = []
        for g, f in zip(groups, feats.split([g.out.shape[0] * g.out.shape[1] for g in groups])):
            try:
                loss = self._group_loss(g.jobs, g.luts, g.src, g.out, f.view(*g.out.shape[:2], -1))
            except Exception as e:
                log.exception("loss of a group of %d jobs failed", len(g.jobs))
                ended.extend(self._fail(job, f"error computing the loss: {e}") for job in g.jobs)
                continue
            total = loss if total is None else total + loss
            stepped.extend(g.jobs)
        if total is not None:
            total.backward()
        _adam_step(stepped)
        if self.safe_each_step:
            _make_safe(stepped)
        for job in stepped:
            job.iteration += 1
        return stepped

    def _update(self, stepped: list[_Job]) -> list[JobResult]:
        """Report the stepped jobs due a report and end those at their last step (or whose loss broke)."""
        ended, done = [], []
        for job in stepped:
            last = job.iteration >= job.spec.steps
            if job.iteration % job.spec.progress_every and not last:
                continue
            if bool(job.nonfinite):  # the only host sync: at report time
                ended.append(self._fail(job, f"the loss became NaN or infinite by iteration {job.iteration}"))
            elif last:
                done.append(job)
            elif self.on_progress:
                self._report(job)
        return ended + (self._finish(done) if done else [])

    def _report(self, job: _Job, safe_lut: torch.Tensor | None = None) -> None:
        """Tell ``on_progress`` where ``job`` stands (``safe_lut``: its LUT, already repaired)."""
        if self.on_progress is None:
            return
        values = torch.cat([job.last_loss.view(1), job.last_terms]).tolist()
        terms = {name: v for name, v in zip(TERMS, values[1:]) if job.weights[name] != 0}
        preview = None
        if job.preview_base is not None:
            with torch.no_grad():  # (what the job will return: the repaired LUT)
                lut = job.safe(job.lut().detach()) if safe_lut is None else safe_lut
                preview = to_image(apply(lut, job.preview_base.unsqueeze(0))[0])
        try:
            self.on_progress(Progress(job.spec.job_id, job.iteration, job.spec.steps, values[0], terms,
                                      preview))
        except Exception:
            log.exception("progress callback failed for job %s", job.spec.job_id)

    def _end_cancelled(self, job: _Job) -> JobResult:
        """A job :meth:`cancel` stopped: cancelled, or failed with the reason it was given."""
        return self._end(job, JobStatus.FAILED if job.failure else JobStatus.CANCELLED, job.failure)

    @torch.no_grad()
    def _finish(self, jobs: list[_Job]) -> list[JobResult]:
        """End jobs with their LUTs and scores (one batched forward for the scores)."""
        luts = [job.safe(job.lut().detach()) for job in jobs]  # (what each returns, and its last preview)
        for job, lut in zip(jobs, luts):
            self._report(job, lut)
        try:
            pixels = [torch.cat([self.guide.preprocess(apply(lut, img.unsqueeze(0))) for img in job.images])
                      for job, lut in zip(jobs, luts)]
            feats = self.guide.encode_pixels(torch.cat(pixels)).split([len(job.images) for job in jobs])
        except Exception as e:
            log.exception("scoring failed")
            return [self._fail(job, f"scoring failed: {e}") for job in jobs]
        out = []
        for job, lut, f in zip(jobs, luts, feats):  # (each photo scored; a series reports the means)
            self._jobs.pop(job.spec.job_id, None)
            src = job.src_full_feats
            scores = Scores(
                source_target=float((src @ job.target).mean()),
                result_target=float((f @ job.target).mean()),
                directional=float(torch.nn.functional.cosine_similarity(
                    f - src, job.text_dir.unsqueeze(0), dim=-1, eps=1e-8).mean()),
            )
            out.append(JobResult(job.spec.job_id, JobStatus.FINISHED, job.iteration, time.perf_counter() - job.started,
                                 lut=lut.float().cpu(), scores=scores, loss=float(job.last_loss)))
        return out

    def run(self) -> dict[str, JobResult]:
        """Step until no job is active; the results by job id (a convenience for the CLI and tests)."""
        results: dict[str, JobResult] = {}
        while self._jobs:
            for r in self.step():
                results[r.job_id] = r
        return results

import pytest
import torch
from PIL import Image

from clipdlut.losses import LossWeights
from clipdlut.optimizer import BatchedOptimizer, JobSpec
from clipdlut.status import JobStatus
from tests.conftest import gradient_image

pytestmark = pytest.mark.unit

# Measured: float32 kernels block differently at other batch sizes; a real dependence
# on batch-mates shows up orders of magnitude larger than this.
BATCH_TOLERANCE = 1e-5


def spec(job_id, seed, steps=20, prompt="赛博朋克风格的夜晚城市", lut_size=9, **kw):
    return JobSpec(job_id, gradient_image(96, 64, seed), prompt, steps=steps, lut_size=lut_size, seed=seed, **kw)


def run(guide, schedule, total_steps=None):
    """Run jobs; ``schedule`` maps a step index to specs to add (or job ids to cancel) before it."""
    opt = BatchedOptimizer(guide)
    results, i = {}, 0
    while True:
        for item in schedule.get(i, []):
            if isinstance(item, str):
                opt.cancel(item)
            else:
                for r in opt.add([item]):
                    results[r.job_id] = r
        if not len(opt) and all(k <= i for k in schedule):
            break
        for r in opt.step():
            results[r.job_id] = r
        i += 1
    return results


def test_batched_equals_alone(guide):
    alone_a = run(guide, {0: [spec("a", 1)]})["a"]
    alone_b = run(guide, {0: [spec("b", 2, prompt="warm golden hour film look")]})["b"]
    both = run(guide, {0: [spec("a", 1), spec("b", 2, prompt="warm golden hour film look")]})
    assert alone_a.status == both["a"].status == JobStatus.FINISHED
    assert (both["a"].lut - alone_a.lut).abs().max() < BATCH_TOLERANCE
    assert (both["b"].lut - alone_b.lut).abs().max() < BATCH_TOLERANCE
    assert (alone_a.lut - alone_b.lut).abs().max() > 100 * BATCH_TOLERANCE  # the jobs really differ
    assert both["a"].scores.__dict__ == pytest.approx(alone_a.scores.__dict__, abs=1e-5)


def test_joining_and_cancelled_batch_mates_do_not_change_a_job(guide):
    alone = run(guide, {0: [spec("a", 1)]})["a"]
    mixed = run(guide, {0: [spec("a", 1), spec("c", 3, steps=50)], 5: [spec("d", 4)], 8: ["c"]})
    assert mixed["c"].status == JobStatus.CANCELLED and mixed["c"].iterations == 8
    assert mixed["d"].status == JobStatus.FINISHED and mixed["d"].iterations == 20
    assert (mixed["a"].lut - alone.lut).abs().max() < BATCH_TOLERANCE


def test_same_seed_same_result_other_seed_other_result(guide):
    a = run(guide, {0: [spec("a", 1)]})["a"]
    again = run(guide, {0: [spec("a", 1)]})["a"]
    other = run(guide, {0: [JobSpec("a", gradient_image(96, 64, 1), "赛博朋克风格的夜晚城市", steps=20,
                                     lut_size=9, seed=99)]})["a"]
    assert torch.equal(a.lut, again.lut)
    assert (a.lut - other.lut).abs().max() > 1e-4


def test_a_nan_job_fails_alone(guide):
    bad = spec("bad", 5, weights=LossWeights().with_overrides(directional=float("nan")))
    res = run(guide, {0: [spec("a", 1), bad]})
    alone = run(guide, {0: [spec("a", 1)]})["a"]
    assert res["bad"].status == JobStatus.FAILED and "NaN" in res["bad"].error
    assert res["bad"].iterations == 10  # caught at the first progress report
    assert res["a"].status == JobStatus.FINISHED
    assert (res["a"].lut - alone.lut).abs().max() < BATCH_TOLERANCE


def test_invalid_jobs_fail_at_admission_only(guide):
    opt = BatchedOptimizer(guide)
    failed = opt.add([spec("ok", 1, steps=2), JobSpec("bad", gradient_image(), "x", lut_size=1),
                      JobSpec("empty", gradient_image(), "   ")])
    assert {r.job_id: r.status for r in failed} == {"bad": JobStatus.FAILED, "empty": JobStatus.FAILED}
    assert "LUT size" in failed[0].error and "target_prompt is empty" in failed[1].error
    assert opt.active_ids == ["ok"]
    assert opt.add([spec("ok", 1)])[0].error == "a job with this id is already running"


def test_loss_goes_down(guide):
    seen = []
    opt = BatchedOptimizer(guide, on_progress=seen.append)
    opt.add([spec("a", 3, steps=50, progress_every=1)])
    result = opt.run()["a"]
    losses = [p.loss for p in seen if p.job_id == "a"]
    assert len(losses) == 50 and result.status == JobStatus.FINISHED
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.05, (first, last)
    assert result.scores.directional > 0  # the image moved toward the target direction


def test_progress_reports_and_previews(guide):
    seen = []
    opt = BatchedOptimizer(guide, on_progress=seen.append)
    opt.add([spec("a", 1, steps=25, progress_every=10, preview=True), spec("b", 2, steps=10)])
    results = opt.run()
    assert [(p.job_id, p.iteration) for p in seen] == [("a", 10), ("b", 10), ("a", 20), ("a", 25)]
    a = [p for p in seen if p.job_id == "a"]
    assert all(isinstance(p.preview, Image.Image) and max(p.preview.size) <= 256 for p in a)
    assert a[0].preview.tobytes() != a[-1].preview.tobytes()  # the preview follows the grade
    assert all(p.preview is None for p in seen if p.job_id == "b")
    assert set(a[0].terms) >= {"directional", "global_target", "smoothness"} and a[0].total == 25
    assert results["a"].lut.shape == (1, 3, 9, 9, 9)


def test_cancel_takes_effect_at_the_next_step(guide):
    opt = BatchedOptimizer(guide)
    opt.add([spec("a", 1, steps=100), spec("b", 2, steps=3)])
    opt.step()
    assert opt.cancel("a") and not opt.cancel("nope")
    ended = opt.step()
    assert [(r.job_id, r.status, r.iterations) for r in ended] == [("a", JobStatus.CANCELLED, 1)]
    assert opt.active_ids == ["b"]


def test_golden_result(guide):
    """A fixed seed gives a fixed result (pins views, losses, Adam and the tiny model together)."""
    r = run(guide, {0: [JobSpec("a", gradient_image(), "赛博朋克风格的夜晚城市", steps=20, lut_size=9, seed=7)]})["a"]
    assert r.loss == pytest.approx(1.27740, abs=1e-3)
    assert r.lut[0, :, 4, 4, 4].tolist() == pytest.approx([0.518514, 0.469596, 0.537006], abs=1e-4)


def test_multi_job_adam_equals_torch_adam_per_job(guide):
    """Jobs with different learning rates and ages step together exactly as one torch Adam each would."""
    from clipdlut.optimizer import _adam_step, _Job

    jobs = [_Job(spec(str(i), i, lr=lr), torch.device("cpu")) for i, lr in enumerate([5e-3, 1e-2, 5e-3])]
    refs = [job.delta.detach().clone().requires_grad_(True) for job in jobs]
    adams = [torch.optim.Adam([r], lr=job.spec.lr) for r, job in zip(refs, jobs)]
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        active = [i for i in range(3) if not (i == 2 and step < 3)]  # job 2 joins late
        for i in active:
            grad = torch.randn(jobs[i].delta.shape, generator=g)
            jobs[i].delta.grad, refs[i].grad = grad.clone(), grad.clone()
            adams[i].step()
        _adam_step([jobs[i] for i in active])
    for job, ref in zip(jobs, refs):
        assert torch.allclose(job.delta, ref, atol=1e-7)
        assert job.delta.grad is None


def test_a_step_that_reports_nothing_reads_no_tensor_value_into_python(guide):
    """The CPU stand-in for the GPU check below: between reports a step neither reads a value back
    (``.item()``, ``bool()``, ``float()``) nor builds a tensor from host data (``torch.tensor``). Adam's step
    counters are the exception, host tensors by design (as in ``torch.optim.Adam``). It cannot see
    ``.tolist()`` or a ``.to(device)`` that is a no-op on CPU: the GPU check covers those."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    host_reads = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.lift_fresh.default):
                files = [(f.filename.replace("\\", "/"), f.lineno) for f in traceback.extract_stack()]
                if not any("torch/optim/" in name for name, _ in files):
                    host_reads.append([f"{func} at {name}:{line}" for name, line in files if "clipdlut/" in name][-1])
            return func(*args, **(kwargs or {}))

    opt = BatchedOptimizer(guide)
    opt.add([spec(str(i), i, steps=50, lut_size=9 + 8 * (i % 2), progress_every=10) for i in range(4)])
    opt.step()
    with Watch():
        for _ in range(8):  # iterations 2 to 9: nothing is reported
            opt.step()
    assert host_reads == []
    with Watch():
        opt.step()  # iteration 10 reports: now the values are read
    assert host_reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU machine)")
def test_a_step_that_reports_nothing_never_waits_for_the_gpu():
    from clipdlut.guidance import Guide
    from clipdlut.models import load_model

    opt = BatchedOptimizer(Guide(load_model("tiny", device="cuda")))
    opt.add([spec(str(i), i, steps=50, lut_size=9 + 8 * (i % 2), progress_every=10) for i in range(4)])
    opt.step()  # the first step initialises kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(8):  # iterations 2 to 9: nothing is reported
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(opt) == 4


def test_jobs_of_other_lut_sizes_and_view_counts_share_a_step_without_changing_each_other(guide):
    jobs = [spec("a", 1, views=3), spec("b", 2, lut_size=17, views=2), spec("c", 3, views=3, steps=12)]
    together = run(guide, {0: jobs})
    for job in jobs:
        alone = run(guide, {0: [job]})[job.job_id]
        assert together[job.job_id].status == JobStatus.FINISHED
        assert (together[job.job_id].lut - alone.lut).abs().max() < BATCH_TOLERANCE


def test_a_job_under_bf16_autocast_ends_near_the_fp32_job(guide):
    """The CUDA compute precision, run on CPU: the job finishes, and bf16 rounding moves its LUT much less
    than the job itself moved it (on average over the nodes: the tiny model's gradients are noise, and at a
    node or two of the gamut's corners the two runs part as far as the grade went)."""
    import dataclasses

    from clipdlut.guidance import Guide
    from clipdlut.lut import identity

    bf16 = Guide(dataclasses.replace(guide.loaded, dtype=torch.bfloat16))
    a, b = run(guide, {0: [spec("a", 1)]})["a"], run(bf16, {0: [spec("a", 1)]})["a"]
    assert a.status == b.status == JobStatus.FINISHED
    assert torch.isfinite(b.lut).all() and not torch.equal(a.lut, b.lut)
    assert (a.lut - b.lut).abs().mean() < 0.5 * (a.lut - identity(9)).abs().mean()


def test_resuming_from_a_state_continues_the_same_run(guide):
    """A job stopped after k steps and started again from its state ends where the uninterrupted run does."""
    whole = run(guide, {0: [spec("a", 1, steps=12)]})["a"]
    opt = BatchedOptimizer(guide)
    opt.add([spec("a", 1, steps=12)])
    for _ in range(5):
        opt.step()
    state = opt.state("a")
    assert state.iteration == 5 and state.adam_step == 5.0
    resumed = run(guide, {0: [spec("a", 1, steps=12, resume=state)]})["a"]
    assert resumed.status == JobStatus.FINISHED and resumed.iterations == 12
    assert torch.equal(resumed.lut, whole.lut)
    fresh = run(guide, {0: [spec("a", 1, steps=12)]})["a"]  # starting over with the seed gives the same too
    assert torch.equal(fresh.lut, whole.lut)


def test_a_state_that_does_not_fit_is_refused(guide):
    opt = BatchedOptimizer(guide)
    opt.add([spec("a", 1, steps=4)])
    opt.step()
    state = opt.state("a")
    failed = BatchedOptimizer(guide).add([spec("b", 1, lut_size=5, resume=state), spec("c", 1, steps=1, resume=state)])
    assert [r.status for r in failed] == [JobStatus.FAILED, JobStatus.FAILED]
    assert all("resume" in r.error for r in failed)


# -- a series, a reference photo, refining, black and white (issue 15) --------------------------------------

def _lab_mean(img: Image.Image) -> torch.Tensor:
    from clipdlut.losses import rgb_to_lab
    from clipdlut.tensors import to_tensor
    return rgb_to_lab(to_tensor(img).unsqueeze(0))[0].mean((-1, -2))


def test_a_series_gets_one_lut_fitted_to_all_its_photos(guide):
    photos = [gradient_image(96, 64, s) for s in (1, 2, 3)]
    r = run(guide, {0: [JobSpec("s", photos, "暖色调", steps=6, lut_size=9, seed=0)]})["s"]
    assert r.status == JobStatus.FINISHED and r.lut.shape == (1, 3, 9, 9, 9)
    alone = run(guide, {0: [JobSpec("a", photos[0], "暖色调", steps=6, lut_size=9, seed=0)]})["a"]
    assert (r.lut - alone.lut).abs().max() > 1e-4  # the other photos changed the fit
    with pytest.raises(ValueError, match="1 to 16 photos"):
        JobSpec("x", [gradient_image()] * 17, "暖色调").validate()


def test_a_reference_photo_moves_the_colour_toward_it(guide):
    from clipdlut.lut import apply
    from clipdlut.tensors import to_image, to_tensor
    photo = gradient_image(96, 64, 5)
    arr = torch.tensor([1.0, 0.75, 0.45]).view(3, 1, 1) * to_tensor(photo)  # a strongly warm-tinted copy
    reference = to_image(arr)
    r = run(guide, {0: [JobSpec("r", photo, "", steps=40, lut_size=9, seed=0, lr=2e-2, reference=reference)]})["r"]
    assert r.status == JobStatus.FINISHED, r.error
    graded = to_image(apply(r.lut, to_tensor(photo).unsqueeze(0))[0])
    before = (_lab_mean(photo) - _lab_mean(reference)).norm()
    after = (_lab_mean(graded) - _lab_mean(reference)).norm()
    assert after < 0.6 * before, (float(before), float(after))


def test_refining_starts_at_the_given_lut(guide):
    from clipdlut.lut import identity, resample
    start = identity(17).clone()
    start[:, 0] = (start[:, 0] * 1.1 + 0.02).clamp(0, 1)  # a warmer look
    start[:, 2] = start[:, 2] * 0.9
    opt = BatchedOptimizer(guide)
    assert not opt.add([JobSpec("r", gradient_image(), "更暖一点", steps=3, lut_size=9, start=start)])
    state = opt.state("r")
    assert torch.allclose(identity(9) + state.delta, resample(start, 9), atol=1e-7)  # step 1 starts at that LUT
    result = opt.run()["r"]
    assert (result.lut - resample(start, 9)).abs().max() < 0.05  # and continues from it
    with pytest.raises(ValueError, match="shape"):
        JobSpec("x", gradient_image(), "x", start=torch.zeros(1, 3, 5, 5, 4)).validate()


def test_black_and_white_is_neutral_to_the_last_bit(guide):
    from clipdlut.lut import to_table
    from clipdlut.safety import measure
    from clipdlut.table import is_neutral
    r = run(guide, {0: [JobSpec("bw", gradient_image(), "高对比度的黑白照片", steps=8, lut_size=9, lr=3e-2,
                                mode="bw", keep_blacks=True)]})["bw"]
    assert r.status == JobStatus.FINISHED
    assert is_neutral(to_table(r.lut)) and measure(r.lut).safe
    assert float(r.lut[0, :, 0, 0, 0].abs().max()) == 0.0  # (the pin holds in bw too)


def test_refining_measures_its_colour_terms_from_the_look_it_starts_from(guide):
    from clipdlut.lut import identity
    start = identity(9).clone()
    start[:, 0] = (start[:, 0] * 0.7 + 0.3)  # a strongly warm look
    seen = {}
    opt = BatchedOptimizer(guide, on_progress=lambda p: seen.setdefault(p.job_id, p.terms))
    opt.add([JobSpec("refine", gradient_image(), "更暖一点", steps=2, lut_size=9, progress_every=1, start=start,
                     lr=1e-4),
             JobSpec("fresh", gradient_image(), "更暖一点", steps=2, lut_size=9, progress_every=1, lr=1e-4)])
    opt.run()
    assert seen["refine"]["color"] < 1e-5 and seen["fresh"]["color"] < 1e-5  # (neither has moved from its start)


def test_a_blank_source_prompt_fails_its_job_alone(guide):
    opt = BatchedOptimizer(guide)
    failed = opt.add([JobSpec("blank", gradient_image(), "暖色", source_prompt=" "), spec("ok", 1, steps=2)])
    assert [(r.job_id, "source_prompt is empty" in r.error) for r in failed] == [("blank", True)]
    assert opt.run()["ok"].status == JobStatus.FINISHED

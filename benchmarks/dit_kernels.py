"""The joint-attention recording of one layer, made by the GPU kernels (Triton) and by PyTorch: equal, and how fast.

One attention call shaped as Flux-dev's at 1024² (24 heads of 128, 512 text + 4,096 image tokens, text first) and as
SD3.5-large's (38 heads of 64, 4,096 image + 333 text, image first), random bfloat16 queries and keys with a
log-sum-exp computed from them; the prompt keeps 7, 33 or 77 text tokens. Both roads record the default quadrants (image→text,
text→image, text→text, head-averaged) into their own buffers; each is compared with an explicit float64 softmax, and
timed with CUDA events over ``--rounds`` alternating rounds (median): alone (one recording between two events, Python's
launch time included) and with the GPU kept busy (what a recording adds inside a generation, where the GPU never waits
for Python: the launches queue behind a sleep kernel).

    python benchmarks/dit_kernels.py --rounds 50 --out /tmp/dit_kernels.json
"""

import argparse
import json
import statistics
from pathlib import Path

import torch

from illustrated_sd.recording import joint_attention

SHAPES = {"flux-dev": dict(heads=24, d=128, text=512, image=4096, text_first=True),
          "sd3.5-large": dict(heads=38, d=64, text=333, image=4096, text_first=False)}
QUADRANTS = ("image_to_text", "text_to_image", "text_to_text")
KEPTS = (7, 33, 77)  # the prompt's own tokens: a short prompt, the benchmarks' prompt, a long one (kernel tiles 16, 64, 128)


def one_layer(shape: dict, device: str):
    """``q, k, v [1, heads, L, d]`` (bf16) and ``lse [1, heads, L]`` (float32, from an explicit softmax)."""
    g = torch.Generator(device).manual_seed(0)
    L = shape["text"] + shape["image"]
    q, k, v = (torch.randn(1, shape["heads"], L, shape["d"], generator=g, device=device).to(torch.bfloat16) for _ in range(3))
    lse = torch.logsumexp((q.float() @ k.float().transpose(-1, -2)) * shape["d"] ** -0.5, dim=-1)
    return q, k, v, lse


def reference(q, k, shape: dict, kept: torch.Tensor) -> dict:
    """The explicit softmax over the whole sequence (float64), head-averaged, cut into the recorded quadrants."""
    p = torch.softmax((q[0].double() @ k[0].double().transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1).mean(0)
    T, N = shape["text"], shape["image"]
    text, image = (slice(0, T), slice(T, None)) if shape["text_first"] else (slice(N, None), slice(0, N))
    padding = torch.ones(T, dtype=torch.bool, device=q.device)
    padding[kept] = False
    columns = lambda rows: torch.cat([rows[:, kept], rows[:, padding].sum(-1, keepdim=True)], -1)  # noqa: E731
    return {"image_to_text": columns(p[image, text]), "text_to_image": p[text, image][kept], "text_to_text": columns(p[text, text][kept])}


REPEATS = 10  # recordings per busy-GPU measurement


def gpu_time(work, repeats: int, sleep_ms: float = 40.0) -> float:
    """Milliseconds of GPU time one ``work()`` takes once its launches are queued behind a busy GPU: (a sleep kernel,
    then ``repeats`` × ``work``) less the sleep alone, over ``repeats``."""
    cycles = int(sleep_ms * 1e-3 * torch.cuda.get_device_properties(0).clock_rate * 1e3)  # clock_rate is in kHz

    def timed(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        for _ in range(n):
            work()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    return (timed(repeats) - timed(0)) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--out", default="/tmp/dit_kernels.json")
    args = parser.parse_args()
    device = "cuda"
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    for (model, shape), n_kept in ((m, n) for m in SHAPES.items() for n in KEPTS):
        q, k, v, lse = one_layer(shape, device)
        kept = torch.arange(n_kept)
        expected = reference(q, k, shape, kept.to(device))
        roads, errors = {}, {}
        for road in ("kernels", "pytorch"):
            recording = joint_attention.JointAttentionRecording(["layer"], shape["text"], shape["image"], shape["text_first"], kept, 1,
                                                                QUADRANTS, False, shape["heads"], torch.float32, device, small=False)
            recording.fused = None if road == "kernels" else False
            recording.record(0, q, k, v, lse)
            assert bool(recording.fused) == (road == "kernels"), f"the kernels did not run for {model}"
            errors[road] = {quadrant: float((recording.buffers[quadrant][0, 0, 0].double() - expected[quadrant]).abs().max())
                            for quadrant in QUADRANTS}
            roads[road] = recording
        times, busy = {road: [] for road in roads}, {road: [] for road in roads}
        for r in range(args.rounds):
            for road in (("kernels", "pytorch") if r % 2 == 0 else ("pytorch", "kernels")):
                # as a lone call: CUDA events around one recording (the GPU waits for Python's launches in between)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                roads[road].record(0, q, k, v, lse)
                end.record()
                torch.cuda.synchronize()
                times[road].append(start.elapsed_time(end) * 1000)
                # as inside a generation, where the GPU is never idle: the launches queue behind a busy GPU (a sleep
                # kernel longer than their Python time), so the events see the kernels' own time only
                busy[road].append(gpu_time(lambda: roads[road].record(0, q, k, v, lse), repeats=REPEATS) * 1000)
        run = {"model": model, **shape, "kept": n_kept, "max_error_vs_explicit_softmax": errors,
               "us_median_alone": {road: round(statistics.median(t), 1) for road, t in times.items()},
               "us_min_alone": {road: round(min(t), 1) for road, t in times.items()},
               "us_median_gpu_busy": {road: round(statistics.median(t), 1) for road, t in busy.items()},
               "us_min_gpu_busy": {road: round(min(t), 1) for road, t in busy.items()}}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

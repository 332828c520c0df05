"""BoundaryLSTM forward + backward against nn.LSTM on one CPU thread, and against the autograd loop it replaced.

    python benchmarks/bdlstm.py [--hidden 256,128] [--batch 32] [--steps 48] [--rounds 30] [--warmup 3]
                                [--threads 1] [--out benchmarks/results/bdlstm.json]

Method (GitHub issue 14, point 2):
- Three sides on the same x (B, T, H), requiring grad as inside ASRN, every step valid:
  new     asrn.model.BoundaryLSTM (the recurrence as one autograd node with a hand-written backward);
  old     the same module with the forward it had before (`OldBoundaryLSTM`, copied below: a Python loop of
          autograd ops per step), loaded with the new one's state_dict;
  nn_lstm nn.LSTM(H, H, batch_first=True).
  Loss: the summed output (V_g for the BDLSTMs, every h_t for nn.LSTM); one call = forward + backward, grads reset
  before each call and not timed.
- torch.set_num_threads(--threads) for all sides (the same process). The first call of each side is timed on its
  own (first_call: what a cold call costs; nothing here compiles or scripts, so it is allocation and cache
  warm-up), then --warmup more calls per side untimed, then --rounds rounds in which the sides alternate
  (new, old, nn_lstm, new, old, nn_lstm, ...), so load from other work falls on every side alike.
- Per call: wall time (perf_counter) and this thread's CPU time (time.thread_time; one torch thread, so that is
  all the CPU the call used); min and median over the rounds; ratios new / nn_lstm and old / nn_lstm of each.
- Ops dispatched per call, from the events torch.profiler records over one forward + backward: aten ops (nested
  included), outer aten ops (not nested in another aten op: what Python, the custom Function or the autograd
  engine called) and all events, with the outer ops called most; per side, and for one ASRN forward + backward
  (variant asrn, B x T, the synthetic store's widths) with the new and the old BoundaryLSTM. On CPU nn.LSTM runs
  as one oneDNN kernel forward (aten::mkldnn_rnn_layer) and one backward: a fused baseline.
- Agreement: the largest |new - old| of V_g, s, ω and of every gradient at the benchmark size (float32).
- The machine (cores, CPU model, torch) and the load average at start and end are recorded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import load, machine, write_results  # noqa: E402

from asrn.model import ASRN, BoundaryLSTM, ModelConfig, straight_through_step  # noqa: E402
from asrn.synth_features import DEFAULT_DIMS  # noqa: E402


class OldBoundaryLSTM(BoundaryLSTM):
    """BoundaryLSTM with the forward it had before issue 14 (autograd through a Python loop over the steps)."""

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return old_forward(self, x, mask)


def old_forward(self: BoundaryLSTM, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    B, T, H = x.shape
    inputs = F.linear(x, torch.cat([self.gate_input.weight, self.boundary_input.weight]),
                      torch.cat([self.gate_input.bias, self.boundary_input.bias]))  # (B, T, 5H)
    w_hidden = torch.cat([self.gate_hidden.weight, self.boundary_hidden.weight])  # (5H, H)
    h, c = x.new_zeros(B, H), x.new_zeros(B, H)  # (B, H)
    gate_in, boundary_in = inputs.split([4 * H, H], dim=-1)  # (B, T, 4H), (B, T, H)
    steps = zip(gate_in.unbind(1), boundary_in.unbind(1), mask.to(x.dtype).unbind(1), mask.unsqueeze(-1).unbind(1),
                strict=True)
    hs, ss = [], []
    for gate_x, boundary_x, valid, step in steps:  # (B, 4H), (B, H), (B,), (B, 1)
        gate_h, boundary_h = F.linear(h, w_hidden).split([4 * H, H], dim=1)
        s = straight_through_step((boundary_x + boundary_h) @ self.boundary_v) * valid  # (B,)  eq. 5
        keep = (1.0 - s).unsqueeze(1)  # (B, 1)  eq. 6
        gates = gate_x + keep * gate_h  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * (keep * c) + torch.sigmoid(i) * torch.tanh(g)  # eq. 4
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        h, c = torch.where(step, h_new, h), torch.where(step, c_new, c)
        hs.append(h)
        ss.append(s)
    h_seq = torch.stack(hs, dim=1)  # (B, T, H)
    s = torch.stack(ss, dim=1)  # (B, T)
    next_valid = F.pad(mask[:, 1:], (0, 1), value=False)
    ends = F.pad(s[:, 1:], (0, 1)) + (mask & ~next_valid).to(x.dtype)
    score = self.shot_score(h_seq).squeeze(-1)
    top = score.masked_fill(ends <= 0, float("-inf")).amax(1, keepdim=True).detach()
    top = torch.nan_to_num(top, neginf=0.0)
    weights = ends * torch.exp(score - top)
    omega = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
    v_global = (omega.unsqueeze(-1) * h_seq).sum(1)
    return v_global, s, omega


def count_ops(step) -> dict:
    """Ops dispatched over one call of `step`, from torch.profiler's events: every aten op (nested ones included,
    e.g. the empty inside a mul), the aten ops not nested in another aten op (the calls Python, a custom
    Function or the autograd engine made), and every event (autograd nodes and record_function ranges too)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.events()

    def outer(e) -> bool:
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        return p is None

    aten = [e for e in events if e.name.startswith("aten::")]
    called = Counter(e.name for e in aten if outer(e))
    return {"aten_ops": len(aten), "aten_ops_outer": sum(called.values()), "events": len(events),
            "most_called_outer": dict(called.most_common(6))}


def agreement(new: BoundaryLSTM, old: BoundaryLSTM, x: Tensor, mask: Tensor) -> dict:
    """max |new - old| over the outputs and the gradients of x and of every parameter."""
    out = {}
    results = []
    for module in (new, old):
        xx = x.detach().clone().requires_grad_(True)
        v_global, s, omega = module(xx, mask)
        grads = torch.autograd.grad(v_global.sum(), [xx, *module.parameters()])
        results.append(((v_global, s, omega), grads))
    for name, a, b in zip(("v_global", "s", "omega"), results[0][0], results[1][0], strict=True):
        out[name] = (a - b).abs().max().item()
    names = ["x", *(n for n, _ in new.named_parameters())]
    for name, a, b in zip(names, results[0][1], results[1][1], strict=True):
        out[f"grad_{name}"] = (a - b).abs().max().item()
    out["boundaries_fired"] = int(results[0][0][1].sum().item())
    return out


def bench(H: int, B: int, T: int, rounds: int, warmup: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(B, T, H, requires_grad=True)
    mask = torch.ones(B, T, dtype=torch.bool)
    new, old, lstm = BoundaryLSTM(H), OldBoundaryLSTM(H), torch.nn.LSTM(H, H, batch_first=True)
    old.load_state_dict(new.state_dict())
    modules = {"new": new, "old": old, "nn_lstm": lstm}
    losses = {"new": lambda: new(x, mask)[0].sum(), "old": lambda: old(x, mask)[0].sum(),
              "nn_lstm": lambda: lstm(x)[0].sum()}

    def call(name: str) -> tuple[float, float]:
        modules[name].zero_grad(set_to_none=True)
        x.grad = None
        wall, cpu = time.perf_counter(), time.thread_time()
        losses[name]().backward()
        return time.perf_counter() - wall, time.thread_time() - cpu

    load_start = load()
    first = {}
    for name in losses:
        wall, cpu = call(name)
        first[name] = {"wall_ms": round(1000 * wall, 2), "thread_cpu_ms": round(1000 * cpu, 2)}
    for _ in range(warmup):
        for name in losses:
            call(name)
    times = {name: {"wall": [], "cpu": []} for name in losses}
    for _ in range(rounds):
        for name in losses:  # interleaved: new, old, nn_lstm, new, old, nn_lstm, ...
            wall, cpu = call(name)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    load_end = load()
    out = {"B": B, "T": T, "H": H, "threads": torch.get_num_threads(), "rounds": rounds, "warmup_calls": warmup,
           "load_average_start": load_start, "load_average_end": load_end, "first_call": first}
    for name, t in times.items():
        out[name] = {"wall_ms_min": round(1000 * min(t["wall"]), 2),
                     "wall_ms_median": round(1000 * statistics.median(t["wall"]), 2),
                     "thread_cpu_ms_min": round(1000 * min(t["cpu"]), 2),
                     "thread_cpu_ms_median": round(1000 * statistics.median(t["cpu"]), 2)}
    for side in ("new", "old"):
        out[f"ratio_{side}_to_nn_lstm"] = {
            key: round(out[side][key] / out["nn_lstm"][key], 2)
            for key in ("wall_ms_min", "wall_ms_median", "thread_cpu_ms_min", "thread_cpu_ms_median")}
    out["ops_per_fwd_bwd"] = {}
    for name, loss in losses.items():
        modules[name].zero_grad(set_to_none=True)
        out["ops_per_fwd_bwd"][name] = count_ops(lambda loss=loss: loss().backward())
    out["max_abs_diff_new_vs_old"] = agreement(new, old, x, mask)
    print(f"H={H}: new {out['new']['thread_cpu_ms_min']} ms min / {out['new']['thread_cpu_ms_median']} median, "
          f"old {out['old']['thread_cpu_ms_min']} / {out['old']['thread_cpu_ms_median']}, nn.LSTM "
          f"{out['nn_lstm']['thread_cpu_ms_min']} / {out['nn_lstm']['thread_cpu_ms_median']} (thread CPU); "
          f"new/nn.LSTM {out['ratio_new_to_nn_lstm']}, old/nn.LSTM {out['ratio_old_to_nn_lstm']}; "
          f"ops new {out['ops_per_fwd_bwd']['new']} old {out['ops_per_fwd_bwd']['old']}; "
          f"load {load_start[0]}->{load_end[0]}", flush=True)
    return out


def asrn_ops(H: int, B: int, T: int) -> dict:
    """Ops of one ASRN forward + backward (variant asrn) with the new BoundaryLSTM and with the old forward."""
    torch.manual_seed(0)
    model = ASRN(ModelConfig(dims=dict(DEFAULT_DIMS), num_classes=8, hidden=H))
    features = {m: torch.randn(B, T, d) for m, d in DEFAULT_DIMS.items()}
    present = {m: torch.ones(B, T, dtype=torch.bool) for m in DEFAULT_DIMS}
    mask = torch.ones(B, T, dtype=torch.bool)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(features, present, mask).logits.sum().backward()

    step()
    out = {"new": count_ops(step)}
    model.shots.forward = types.MethodType(old_forward, model.shots)
    step()
    out["old"] = count_ops(step)
    return {"B": B, "T": T, "H": H, "dims": dict(DEFAULT_DIMS), **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", default="256,128", help="H values, comma-separated (128: the default recipe's)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bdlstm.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    started = time.perf_counter()
    results = {f"H{H}": bench(H, args.batch, args.steps, args.rounds, args.warmup)
               for H in (int(v) for v in args.hidden.split(",") if v)}
    ops = {f"H{H}": asrn_ops(H, args.batch, args.steps) for H in (int(v) for v in args.hidden.split(",") if v)}
    result = {
        "benchmark": "BoundaryLSTM forward + backward: the new one (one autograd node, hand-written backward), the "
                     "old autograd loop, and nn.LSTM(H, H, batch_first=True), on the same x (B, T, H)",
        "method": "one process; first call per side timed apart, then --warmup untimed calls; sides interleaved "
                  "per round; min and median of wall and thread CPU time; ops = torch.profiler events per call "
                  "(see the docstring of benchmarks/bdlstm.py)",
        "command": " ".join(["python", "benchmarks/bdlstm.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "results": results,
        "asrn_ops_per_fwd_bwd": ops,
        "load_average_end": load(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    write_results(args.out, result)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

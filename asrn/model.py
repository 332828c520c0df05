"""ASRN (paper §3): attention fusion of four modalities (MFA), a boundary-detecting LSTM whose shot features pool
into a global video feature, and global-local temporal attention (GLA) over a second LSTM.

Reads top to bottom like §3. Shapes: B videos, T steps, M = len(MODALITIES) modalities, D_m input widths,
H = config.hidden, C classes. `mask` (B, T) marks valid steps; padding sits at the end (as `sequence.collate`
builds it) and never changes an output.

Precision, chosen per part (asrn.loop's `precision` sets the autocast): under bf16 autocast the projections, the
attention scores and the classifier run in bfloat16; every recurrence (the BDLSTM, GLA's LSTM, the no-gla and
lstm baselines) runs in float32 with autocast off (`RECURRENT_DTYPE`): CUDA autocast would run cuDNN's LSTM in
float16, where most gradients reaching the GLA LSTM fall below float16's smallest normal and nothing here scales
them, and a cell state summed over T steps in bfloat16's 8-bit mantissa drifts. `part_dtypes` reports what ran.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from asrn.errors import AsrnError
from asrn.store import MODALITIES

VARIANTS: tuple[str, ...] = ("asrn", "no-gla", "no-mfa", "lstm", "tsn", "mean")
BOUNDARY_FORMS: tuple[str, ...] = ("cuts", "unsupervised")
# cuts          s_t is the store's shot start (the cut detected at extraction, or planted) on videos whose shots are
#               known, so eq. 6 resets and eq. 7 pools at the video's real shots; the paper's detector elsewhere
# unsupervised  the paper's form: s_t = τ(vᵀ(...)) of eq. 5 everywhere, trained only through the classification loss
#               by the straight-through estimator (checkpoints written before this field were trained so)
# asrn    full model: MFA -> BDLSTM (global V_g) and GLA over a second LSTM -> classifier
# no-gla  MFA -> plain LSTM, last valid hidden state -> classifier (no shots, no temporal attention)
# no-mfa  rgb only (one Linear + tanh, no fusion across modalities) -> BDLSTM + GLA as in asrn
# lstm    plain LSTM over the concatenated modality features, last valid hidden state -> classifier
# tsn     the paper's TSN row: rgb + motion only, projected per step (Linear + tanh), averaged over valid steps
# mean    all four modalities concatenated, projected per step (Linear + tanh), averaged over valid steps

# Initial bias of the LSTM forget gates (Gers et al. 2000; Jozefowicz et al. 2015): σ(1) ≈ 0.73 keeps the cell
# memory across steps at the start of training instead of halving it every step.
FORGET_BIAS = 1.0

# Dropout on the multimodal layer (§3.1 "we apply dropout to this multimodal layer"); the paper gives no rate, so a
# modest one, capped by config.dropout so that dropout=0 turns every dropout off.
FUSION_DROPOUT = 0.3

# Every recurrence runs in at least this dtype, whatever the autocast (see the module docstring; float64 stays).
RECURRENT_DTYPE = torch.float32


def recurrent_input(x: Tensor) -> Tensor:
    """x widened to RECURRENT_DTYPE when narrower (bf16/fp16 from autocast); float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, RECURRENT_DTYPE))


class ModelConfigError(AsrnError):
    """A ModelConfig field out of range; the message names the field (and the modality, for dims)."""


@dataclass
class ModelConfig:
    dims: dict[str, int]  # modality -> input width, keys from store.MODALITIES ("rgb" required)
    num_classes: int
    variant: str = "asrn"
    hidden: int = 256  # fused width and LSTM hidden size
    dropout: float = 0.7  # before the last layer (paper §4.2)
    boundaries: str = "cuts"  # how the BDLSTM's s_t is found, one of BOUNDARY_FORMS

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ModelConfigError(f"variant {self.variant!r} is unknown: expected one of {', '.join(VARIANTS)}")
        if self.boundaries not in BOUNDARY_FORMS:
            raise ModelConfigError(f"boundaries {self.boundaries!r} is unknown: expected one of "
                                   f"{', '.join(BOUNDARY_FORMS)}")
        if not isinstance(self.dims, dict) or not self.dims:
            raise ModelConfigError(f"dims = {self.dims!r} must map modalities ({', '.join(MODALITIES)}) to widths")
        for m, d in self.dims.items():
            if m not in MODALITIES:
                raise ModelConfigError(f"dims[{m!r}]: unknown modality, expected one of {', '.join(MODALITIES)}")
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d <= 0:
                raise ModelConfigError(f"dims[{m!r}] = {d!r} is not a positive integer")
        if "rgb" not in self.dims:
            raise ModelConfigError("dims['rgb'] is missing: every variant uses the rgb feature")
        self.dims = {m: int(self.dims[m]) for m in MODALITIES if m in self.dims}
        for name in ("num_classes", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ModelConfigError(f"{name} = {value!r} is not a positive integer")
        if not isinstance(self.dropout, numbers.Real) or not 0.0 <= self.dropout < 1.0:
            raise ModelConfigError(f"dropout = {self.dropout!r} must lie in [0, 1)")


@dataclass
class ASRNOutput:
    logits: Tensor  # (B, C) pre-sigmoid
    modality_attention: Tensor  # (B, T, M) c_t over present modalities, 0 on padding and absent modalities
    boundaries: Tensor  # (B, T) s_t in {0, 1}; 0 on padding and for variants without BDLSTM
    shot_weights: Tensor  # (B, T) ω_s at the step that ends each shot, 0 elsewhere; sums to 1 per video
    temporal_attention: Tensor  # (B, T) a_t over valid steps (uniform without GLA), 0 on padding


def masked_softmax(scores: Tensor, allowed: Tensor, dim: int) -> Tensor:
    """Softmax over the `allowed` entries along `dim`; the others (and rows with none allowed) get exactly 0."""
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim).masked_fill(~allowed, 0.0)


def straight_through_step(logit: Tensor) -> Tensor:
    """τ(x) = 1 if σ(x) > 0.5 else 0 forward (eq. 5); the gradient of σ backward (straight-through estimator)."""
    soft = torch.sigmoid(logit)
    return (logit > 0).to(soft.dtype) + (soft - soft.detach())


def last_valid(h: Tensor, mask: Tensor) -> Tensor:
    """The hidden state at each video's last valid step: (B, T, H) -> (B, H)."""
    index = (mask.sum(1) - 1).clamp(min=0)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), index]


def run_lstm(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """(B, T, D) -> (B, T, H) hidden states of `lstm`, computed in RECURRENT_DTYPE with autocast off."""
    with torch.autocast(x.device.type, enabled=False):
        h, _ = lstm(recurrent_input(x))
    return h


def uniform_over(mask: Tensor) -> Tensor:
    """Equal weights over the True entries of each row of a (B, T) or (B, T, M) mask."""
    weights = mask.to(torch.get_default_dtype())
    return weights / weights.sum(-1, keepdim=True).clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------------------
# §3.1 Multi-feature fusion based on attention (MFA), eqs. 1-3


class ModalityAttention(nn.Module):
    """MFA: project each modality to H, weigh the modalities present at each step, fuse them into x_t.

    Absent modalities (present[m] False) are zeroed before projection and masked out of the softmax, so their
    (arbitrary) feature values never reach the output. With `dims` holding rgb only this is the no-mfa input layer.
    """

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float):
        super().__init__()
        self.modalities = tuple(m for m in MODALITIES if m in dims)
        self.slots = [MODALITIES.index(m) for m in self.modalities]
        self.project = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in self.modalities})
        self.score = nn.Linear(hidden, 1)  # the scoring vector shared by all modalities
        self.fuse = nn.Linear(hidden, hidden)  # W, b of eq. 3
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        allowed = torch.stack([present[m] for m in self.modalities], dim=-1)  # (B, T, M')
        xs = torch.stack([
            self.project[m](torch.where(present[m].unsqueeze(-1), features[m], 0.0))  # (B, T, H)
            for m in self.modalities
        ], dim=2)  # (B, T, M', H)
        c = masked_softmax(self.score(torch.tanh(xs)).squeeze(-1), allowed, dim=-1)  # (B, T, M')  eq. 1
        y = (c.unsqueeze(-1) * xs).sum(2)  # (B, T, H)  eq. 2: y_t = Σ_i c_t^i x_t^i
        x = self.dropout(torch.tanh(self.fuse(y)))  # (B, T, H)  eq. 3: x_t = φ(W y_t + b)
        if len(self.modalities) < len(MODALITIES):
            full = c.new_zeros(*c.shape[:2], len(MODALITIES))  # (B, T, M)
            full[..., self.slots] = c
            c = full
        return x, c


class ConcatFeatures(nn.Module):
    """Input of the lstm and mean baselines: the modalities concatenated, absent ones zeroed (no attention).

    The reported modality attention is uniform over the modalities present, which is what concatenation weighs.
    """

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.modalities = tuple(m for m in MODALITIES if m in dims)
        self.slots = [MODALITIES.index(m) for m in self.modalities]
        self.width = sum(dims[m] for m in self.modalities)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat([torch.where(present[m].unsqueeze(-1), features[m], 0.0)
                       for m in self.modalities], dim=-1)  # (B, T, Σ D_m)
        allowed = torch.zeros(*x.shape[:2], len(MODALITIES), dtype=torch.bool, device=x.device)  # (B, T, M)
        allowed[..., self.slots] = torch.stack([present[m] for m in self.modalities], dim=-1)
        return x, uniform_over(allowed).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
# §3.2 Global feature: boundary-detection LSTM and shot pooling, eqs. 4-7


class BoundaryLSTM(nn.Module):
    """BDLSTM: an LSTM that detects shot boundaries s_t and resets (h, c) at them (eqs. 4-6).

    The hidden state that closes each shot (the step before a boundary, and the last valid step) is a shot feature
    F_s; V_g = Σ_s ω_s F_s with ω a learned softmax over the shots of a video (eq. 7). Padding steps carry the state
    through unchanged and never end a shot. Where `forced` (B, T) is True, s_t is `cuts` (the store's shot starts)
    instead of eq. 5's detector, and no gradient reaches the detector from that step. The cell is the standard LSTM
    (g_t through tanh, o_t through σ), which the extracted eq. 4 garbles. The steps run in `_BoundaryRecurrence`,
    one autograd node with its own backward: an autograd loop cost ~2.4x nn.LSTM forward + backward on CPU
    (benchmarks/bdlstm.py).
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.gate_input = nn.Linear(hidden, 4 * hidden)  # W_iy, W_fy, W_gy, W_oy and the gate biases (eq. 4)
        self.gate_hidden = nn.Linear(hidden, 4 * hidden, bias=False)  # W_ih, W_fh, W_gh, W_oh
        self.boundary_input = nn.Linear(hidden, hidden)  # W_si and b_s (eq. 5)
        self.boundary_hidden = nn.Linear(hidden, hidden, bias=False)  # W_sh
        self.boundary_v = nn.Parameter(torch.empty(hidden).uniform_(-hidden ** -0.5, hidden ** -0.5))  # v
        self.shot_score = nn.Linear(hidden, 1)  # the logit of ω_s (eq. 7)

    def forward(self, x: Tensor, mask: Tensor, cuts: Tensor | None = None,
                forced: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # the whole block in RECURRENT_DTYPE
            return self._forward(recurrent_input(x), mask, cuts, forced)

    def _forward(self, x: Tensor, mask: Tensor, cuts: Tensor | None,
                 forced: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        gate_x = self.gate_input(x)  # (B, T, 4H)  W_y x_t + b of every step at once
        # eq. 5 is linear inside τ: vᵀ(W_si x_t + W_sh h_{t-1} + b_s) = (W_siᵀv)ᵀx_t + (W_shᵀv)ᵀh_{t-1} + vᵀb_s, so the
        # boundary detector costs one dot product per step instead of an (H, H) matmul
        v = self.boundary_v  # (H,)
        boundary_x = x @ (self.boundary_input.weight.t() @ v) + self.boundary_input.bias @ v  # (B, T)
        boundary_w = self.boundary_hidden.weight.t() @ v  # (H,)  W_shᵀv
        # eqs. 4-6 step by step, as one autograd node, in gate_x's dtype (RECURRENT_DTYPE from forward)
        dtype = gate_x.dtype
        if forced is not None and not bool(forced.any()):
            cuts = forced = None  # nothing forced: the paper's detector alone, at its full speed
        if forced is not None:
            cuts, forced = cuts.bool() & forced.bool(), forced.bool()  # (B, T) each
        h_seq, s = _BoundaryRecurrence.apply(gate_x, boundary_x.to(dtype), self.gate_hidden.weight.to(dtype),
                                             boundary_w.to(dtype), mask.bool(), cuts, forced, torch.is_grad_enabled())
        # a shot ends at t when step t+1 opens a new one, or when t is the last valid step
        next_valid = F.pad(mask[:, 1:], (0, 1), value=False)  # (B, T)
        ends = F.pad(s[:, 1:], (0, 1)) + (mask & ~next_valid).to(x.dtype)  # (B, T) in {0, 1}, gradient via s
        score = self.shot_score(h_seq).squeeze(-1)  # (B, T)
        top = score.masked_fill(ends <= 0, float("-inf")).amax(1, keepdim=True).detach()  # (B, 1)
        top = torch.nan_to_num(top, neginf=0.0)
        weights = ends * torch.exp(score - top)  # (B, T)
        omega = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)  # (B, T)  ω_s at the shot ends
        v_global = (omega.unsqueeze(-1) * h_seq).sum(1)  # (B, H)  eq. 7: V_g = Σ_s ω_s F_s
        return v_global, s, omega


class _BoundaryRecurrence(torch.autograd.Function):
    """Eqs. 4-6 over all T steps as one autograd node, for speed: the maths of stepping the cell under autograd
    (tests/test_model.py keeps that loop and holds the two equal) in about half the ops. The forward keeps, per
    step, the local derivatives the backward needs (computed while the step's tensors are in cache); the backward
    runs the steps in reverse at one matmul and ~14 small ops each and finds the weight gradients in one matmul
    over all steps. Per-step tensors stay small: whole-sequence work buffers cost more in page faults than they
    save in ops. First derivatives only (once_differentiable: a double backward raises).

    gate_x (B, T, 4H) = W_y x_t + b, boundary_x (B, T) = vᵀ(W_si x_t + b_s), w_gates (4H, H) = W_h,
    w_boundary (H,) = W_shᵀv, mask (B, T) bool, cuts and forced (B, T) bool or both None: s_t = cuts_t where
    forced_t (a where() on τ's output, zero gradient into u_t there), keep_grad: whether to keep what backward needs
    -> h (B, T, H), s (B, T).
    """

    @staticmethod
    def forward(ctx, gate_x: Tensor, boundary_x: Tensor, w_gates: Tensor, w_boundary: Tensor, mask: Tensor,
                cuts: Tensor | None, forced: Tensor | None, keep_grad: bool) -> tuple[Tensor, Tensor]:
        B, H = gate_x.shape[0], w_gates.shape[1]
        full, some = mask.all(0).tolist(), mask.any(0).tolist()  # per step: every video valid, any video valid
        h = c = gate_x.new_zeros(B, H)  # (B, H)
        zero, one = gate_x.new_zeros(()), gate_x.new_ones(())
        w_gates_t, w_boundary_col = w_gates.t(), w_boundary.unsqueeze(1)  # (H, 4H), (H, 1)
        hs, keeps, saved = [], [], []
        steps = zip(gate_x.unbind(1), boundary_x.unsqueeze(2).unbind(1), mask.unsqueeze(2).unbind(1), strict=True)
        forced_steps = None if forced is None else list(zip(cuts.unsqueeze(2).unbind(1),
                                                            forced.unsqueeze(2).unbind(1), strict=True))
        with torch.autocast(gate_x.device.type, enabled=False):  # everything in gate_x.dtype
            for t, (x_t, b_t, valid) in enumerate(steps):  # (B, 4H), (B, 1), (B, 1)
                if not some[t]:  # every video padded: the state carries through
                    hs.append(h)
                    keeps.append(one.expand(B, 1))
                    saved.append(None)
                    continue
                u = torch.addmm(b_t, h, w_boundary_col)  # (B, 1)  eq. 5 inside τ
                fire = u > 0  # τ: σ(x) > 0.5 iff x > 0, as straight_through_step
                if forced_steps is not None:  # s_t = the store's cut where the video's shots are known
                    fire = torch.where(forced_steps[t][1], forced_steps[t][0], fire)
                if not full[t]:
                    fire = fire & valid
                keep = torch.where(fire, zero, one)  # (B, 1)  1 - s_t; padding never opens a shot
                kept_h, kept_c = keep * h, keep * c  # (B, H)  eq. 6: h_{t-1}(1 - s_t), c_{t-1}(1 - s_t)
                gates = torch.addmm(x_t, kept_h, w_gates_t)  # (B, 4H)  W_y x_t + b + W_h h_{t-1}: the one matmul
                sig = torch.sigmoid(gates)  # (B, 4H)  σ of every gate (the g block unused)
                tanh_g = torch.tanh(gates[:, 2 * H:3 * H])  # (B, H)
                i, f, _, o = sig.chunk(4, dim=1)  # (B, H) each
                c_new = torch.addcmul(i * tanh_g, f, kept_c)  # eq. 4
                tanh_c = torch.tanh(c_new)
                h_new = o * tanh_c  # (B, H)
                if keep_grad:
                    # ∂c_t/∂(i, f, g) and ∂h_t/∂o (pre-activations): [tanh g σ'(i), c_{t-1}(1 - s_t) σ'(f),
                    # i (1 - tanh² g), tanh c_t σ'(o)]
                    d_gates = torch.addcmul(sig, sig, sig, value=-1.0)  # (B, 4H)  σ' = σ - σ²
                    torch.addcmul(one, tanh_g, tanh_g, value=-1.0, out=d_gates[:, 2 * H:3 * H])
                    d_gates *= torch.cat([tanh_g, kept_c, i, tanh_c], dim=1)
                    dh_dc = torch.addcmul(o, h_new, tanh_c, value=-1.0)  # (B, H)  ∂h_t/∂c_t = o (1 - tanh² c_t)
                    saved.append((u, keep, kept_h, c, f, dh_dc, d_gates.view(B, 4, H)))
                if full[t]:
                    h, c = h_new, c_new
                else:  # padding carries the state through
                    h, c = torch.where(valid, h_new, h), torch.where(valid, c_new, c)
                hs.append(h)
                keeps.append(keep)
        h_seq, s_seq = torch.stack(hs, dim=1), 1.0 - torch.cat(keeps, dim=1)  # (B, T, H), (B, T)
        ctx.saved, ctx.full = saved, full
        ctx.save_for_backward(w_gates, w_boundary, mask & ~forced if forced is not None else mask, mask, h_seq)
        return h_seq, s_seq

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h: Tensor, grad_s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None, None, None]:
        w_gates, w_boundary, detected, mask, h_seq = ctx.saved_tensors
        B, T, H = h_seq.shape
        zero = h_seq.new_zeros(B, H)
        # straight-through, as straight_through_step: ∂s_t/∂u_t = σ'(u_t) on valid steps that eq. 5 decided (0 where
        # s_t was forced to the store's cut), for every step at once
        sig_u = torch.sigmoid(torch.cat([zero[:, :1] if step is None else step[0] for step in ctx.saved], dim=1))
        du_ds = sig_u * (1.0 - sig_u) * detected  # (B, T)
        grad_gates = h_seq.new_empty(B, T, 4 * H)  # ∂L/∂gates_t (pre-activation) of every step
        grad_boundary = h_seq.new_empty(B, T)  # ∂L/∂u_t
        kept_h = [zero] * T  # h_{t-1}(1 - s_t)
        dh, dc = zero, zero  # ∂L/∂h_t, ∂L/∂c_t from the steps after t  (B, H)
        h_prev = F.pad(h_seq[:, :-1], (0, 0, 1, 0))  # (B, T, H)  h_{t-1}
        steps = list(zip(grad_h.unbind(1), grad_s.unsqueeze(2).unbind(1), du_ds.unsqueeze(2).unbind(1),
                         mask.unsqueeze(2).unbind(1), h_prev.unbind(1), grad_gates.unbind(1),
                         grad_gates.view(B, T, 4, H).unbind(1), grad_boundary.unsqueeze(2).unbind(1), strict=True))
        for t in reversed(range(T)):
            grad_h_t, grad_s_t, du_ds_t, valid, h_prev_t, grad_t, grad_4_t, grad_u_t = steps[t]
            dh = dh + grad_h_t  # (B, H)
            if ctx.saved[t] is None:  # every video padded
                grad_t.zero_()
                grad_u_t.zero_()
                continue
            _, keep, kept_h[t], c_prev, f, dh_dc, d_gates = ctx.saved[t]
            dh_t, dc_t = (dh, dc) if ctx.full[t] else (dh * valid, dc * valid)
            dc_t = torch.addcmul(dc_t, dh_t, dh_dc)  # (B, H)  ∂L/∂c_t
            torch.mul(torch.stack([dc_t, dc_t, dc_t, dh_t], dim=1), d_gates, out=grad_4_t)  # (B, 4, H)
            dc_kept = dc_t * f  # (B, H)  ∂L/∂(c_{t-1}(1 - s_t))
            dh_kept = torch.mm(grad_t, w_gates)  # (B, H)  ∂L/∂(h_{t-1}(1 - s_t))
            d_keep = torch.addcmul(dh_kept * h_prev_t, dc_kept, c_prev).sum(1, keepdim=True)  # (B, 1)  ∂L/∂(1 - s_t)
            du = torch.mul(grad_s_t - d_keep, du_ds_t, out=grad_u_t)  # (B, 1)
            dh_prev = torch.addcmul(keep * dh_kept, du, w_boundary)  # (B, H)
            dc_prev = keep * dc_kept
            if ctx.full[t]:
                dh, dc = dh_prev, dc_prev
            else:  # padding passes the gradient straight to the step before
                dh, dc = torch.where(valid, dh_prev, dh), torch.where(valid, dc_prev, dc)
        # weight gradients summed over every step at once: Σ_t ∂L/∂gates_tᵀ h_{t-1}(1 - s_t) and Σ_t ∂L/∂u_t h_{t-1}
        grad_w_gates = grad_gates.view(B * T, 4 * H).t() @ torch.stack(kept_h, dim=1).view(B * T, H)  # (4H, H)
        grad_w_boundary = grad_boundary.view(B * T) @ h_prev.view(B * T, H)  # (H,)
        return grad_gates, grad_boundary, grad_w_gates, grad_w_boundary, None, None, None, None


# ---------------------------------------------------------------------------------------------------------------
# §3.2 Attention model: global-local attention over a second LSTM, eqs. 8-9


class GlobalLocalAttention(nn.Module):
    """GLA: a second LSTM over x_t; the steps are weighed by their fit with the global feature V_g (eq. 8)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.global_proj = nn.Linear(hidden, hidden)  # w_v
        self.local_proj = nn.Linear(hidden, hidden, bias=False)  # w_h
        self.score = nn.Linear(hidden, 1, bias=False)  # w

    def forward(self, x: Tensor, mask: Tensor, v_global: Tensor) -> tuple[Tensor, Tensor]:
        h = run_lstm(self.lstm, x)  # (B, T, H) float32; unidirectional, end padding never reaches a valid step
        A = torch.tanh(self.global_proj(v_global).unsqueeze(1) + self.local_proj(h))  # (B, T, H)  eq. 8
        a = masked_softmax(self.score(A).squeeze(-1), mask, dim=1)  # (B, T)  a_t = softmax_t(wᵀ A_t)
        pooled = (a.unsqueeze(-1) * h).sum(1)  # (B, H)  Σ_t a_t h_t (eq. 9)
        return pooled, a


# ---------------------------------------------------------------------------------------------------------------
# The model and its loss, eqs. 9-10


class ASRN(nn.Module):
    """The ASRN model or one of its ablations (`config.variant`, see VARIANTS), returning logits and attentions."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        H, variant = config.hidden, config.variant
        fusion_dropout = min(config.dropout, FUSION_DROPOUT)
        if variant in ("asrn", "no-gla"):
            self.fusion = ModalityAttention(config.dims, H, fusion_dropout)
        elif variant == "no-mfa":
            self.fusion = ModalityAttention({"rgb": config.dims["rgb"]}, H, fusion_dropout)
        elif variant == "tsn":
            self.fusion = ConcatFeatures({m: config.dims[m] for m in ("rgb", "motion") if m in config.dims})
        else:
            self.fusion = ConcatFeatures(config.dims)
        self.modalities = self.fusion.modalities
        if variant in ("asrn", "no-mfa"):
            self.shots = BoundaryLSTM(H)
            self.attention = GlobalLocalAttention(H)
        elif variant == "no-gla":
            self.lstm = nn.LSTM(H, H, batch_first=True)
        elif variant == "lstm":
            self.lstm = nn.LSTM(self.fusion.width, H, batch_first=True)
        else:  # tsn, mean
            self.project = nn.Linear(self.fusion.width, H)
        self.dropout = nn.Dropout(config.dropout)  # §4.2: dropout 0.7 before the final fully connected layer
        self.classifier = nn.Linear(H, config.num_classes)  # W, b of eq. 9
        # per-dimension standardisation of each input modality (identity until `set_input_stats`); buffers, so that
        # best.pt carries the training set's statistics to prediction
        for m, d in config.dims.items():
            self.register_buffer(f"input_mean_{m}", torch.zeros(d))
            self.register_buffer(f"input_std_{m}", torch.ones(d))
        self.reset_parameters()

    def set_input_stats(self, stats: dict[str, tuple]) -> None:
        """Standardise inputs by the train split's per-dimension (mean, std) per modality (store.feature_statistics).

        Random-init encoders give features that differ little between videos around a large common mean; without
        this the model sees almost constant inputs and learns only the label priors.
        """
        for m, (mean, std) in stats.items():
            if m not in self.config.dims:
                continue
            mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
            if mean.shape != (self.config.dims[m],) or std.shape != mean.shape:
                raise ValueError(f"input stats of {m!r} have shape {tuple(mean.shape)}, "
                                 f"expected ({self.config.dims[m]},)")
            getattr(self, f"input_mean_{m}").copy_(mean)
            getattr(self, f"input_std_{m}").copy_(std.clamp(min=1e-6))

    def reset_parameters(self) -> None:
        """Initialise for signal propagation through the stack (the paper gives no initialisation).

        PyTorch's default Linear/LSTM initialisation (variance 1/(3 fan_in)) shrinks the signal at every layer; with
        the modality average, two tanh layers, an LSTM whose gates start at 0.5 and the temporal average, a freshly
        built asrn gave logits that differ across videos by ~0.01 and fusion gradients ~10x smaller than the mean
        baseline's, so SGD sat at the label-prior solution. Here: Xavier-uniform Linear weights (gain 5/3 where a
        tanh follows, eq. 3 and the mean baseline), zero biases; LSTM input weights Xavier and recurrent weights
        orthogonal per gate, biases 0 except the forget gate (FORGET_BIAS). The boundary vector v keeps its
        U(±1/√H) init.
        """
        tanh_gain = nn.init.calculate_gain("tanh")
        tanh_follows = {id(m) for m in (getattr(self.fusion, "fuse", None), getattr(self, "project", None))
                        if m is not None}
        H = self.config.hidden
        for module in self.modules():
            if isinstance(module, nn.Linear) and not _is_lstm_gate(module, self):
                nn.init.xavier_uniform_(module.weight, gain=tanh_gain if id(module) in tanh_follows else 1.0)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LSTM):
                for layer in range(module.num_layers):
                    _init_lstm_gates(getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}"),
                                     getattr(module, f"bias_ih_l{layer}"), H)
                    nn.init.zeros_(getattr(module, f"bias_hh_l{layer}"))
            elif isinstance(module, BoundaryLSTM):
                _init_lstm_gates(module.gate_input.weight, module.gate_hidden.weight, module.gate_input.bias, H)

    def forward(self, features: dict[str, Tensor], present: dict[str, Tensor], mask: Tensor,
                shot_start: Tensor | None = None, shot_known: Tensor | None = None) -> ASRNOutput:
        """`shot_start` (B, T) bool: the store's shot starts per kept step (sequence.Batch); `shot_known` (B,) bool:
        which videos have them (None: all, when shot_start is given). Read only by boundaries="cuts"."""
        mask = self._check_mask(mask)
        features = {m: (x - getattr(self, f"input_mean_{m}")) / getattr(self, f"input_std_{m}")
                    if m in self.config.dims and x.shape[-1:] == (self.config.dims[m],) else x
                    for m, x in features.items()}  # (B, T, D_m) standardised; wrong widths are reported below
        present = self._present(features, present, mask)  # m -> (B, T) bool, False on padding
        x, modality_attention = self.fusion(features, present)  # (B, T, H) or (B, T, Σ D_m); (B, T, M)
        variant = self.config.variant
        boundaries = torch.zeros_like(mask, dtype=x.dtype)  # (B, T)
        shot_weights = (mask & ~F.pad(mask[:, 1:], (0, 1), value=False)).to(x.dtype)  # one shot, ends at last step
        temporal_attention = uniform_over(mask).to(x.dtype)  # (B, T)
        if variant in ("asrn", "no-mfa"):
            cuts, forced = self._forced_boundaries(mask, shot_start, shot_known)  # (B, T) each, or None
            v_global, boundaries, shot_weights = self.shots(x, mask, cuts, forced)  # (B, H), (B, T), (B, T)
            pooled, temporal_attention = self.attention(x, mask, v_global)  # (B, H), (B, T)
        elif variant in ("no-gla", "lstm"):
            h = run_lstm(self.lstm, x)  # (B, T, H) float32
            pooled = last_valid(h, mask)  # (B, H)
        else:  # tsn, mean
            h = torch.tanh(self.project(x))  # (B, T, H)
            pooled = (temporal_attention.unsqueeze(-1) * h).sum(1)  # (B, H) average over valid steps
        logits = self.classifier(self.dropout(pooled))  # (B, C)  eq. 9, before σ
        return ASRNOutput(logits, modality_attention, boundaries, shot_weights, temporal_attention)

    def _forced_boundaries(self, mask: Tensor, shot_start: Tensor | None,
                           shot_known: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(cuts, forced) for BoundaryLSTM: the store's shot starts on the valid steps of videos whose shots are
        known, with boundaries="cuts"; (None, None) where the paper's detector decides every step."""
        if self.config.boundaries == "unsupervised" or shot_start is None:
            return None, None
        if tuple(shot_start.shape) != tuple(mask.shape):
            raise ValueError(f"shot_start has shape {tuple(shot_start.shape)}, expected {tuple(mask.shape)}")
        known = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device) if shot_known is None else shot_known
        if tuple(known.shape) != (mask.shape[0],):
            raise ValueError(f"shot_known has shape {tuple(known.shape)}, expected ({mask.shape[0]},)")
        return shot_start.bool() & mask, known.bool().unsqueeze(1) & mask  # (B, T), (B, T)

    @staticmethod
    def _check_mask(mask: Tensor) -> Tensor:
        if mask.dim() != 2:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected (B, T)")
        mask = mask.bool()
        steps = torch.arange(mask.shape[1], device=mask.device)
        if not torch.equal(mask, steps < mask.sum(1, keepdim=True)):
            raise ValueError("mask must mark a prefix of each row (padding at the end), as sequence.collate builds")
        return mask

    def _present(self, features: dict[str, Tensor], present: dict[str, Tensor], mask: Tensor) -> dict[str, Tensor]:
        """Validate the inputs this variant reads; a modality without a `present` entry counts as present."""
        out = {}
        for m in self.modalities:
            if m not in features:
                raise ValueError(f"features lacks modality {m!r}, which the {self.config.variant} model reads")
            x, width = features[m], self.config.dims[m]
            if x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape) or x.shape[2] != width:
                raise ValueError(f"features[{m!r}] has shape {tuple(x.shape)}, expected {(*mask.shape, width)}")
            p = present.get(m)
            if p is not None and tuple(p.shape) != tuple(mask.shape):
                raise ValueError(f"present[{m!r}] has shape {tuple(p.shape)}, expected {tuple(mask.shape)}")
            out[m] = mask if p is None else p.bool() & mask
        return out


def _is_lstm_gate(module: nn.Module, model: nn.Module) -> bool:
    """The gate Linears of a BoundaryLSTM, which `_init_lstm_gates` initialises."""
    return any(module is b.gate_input or module is b.gate_hidden
               for b in model.modules() if isinstance(b, BoundaryLSTM))


@torch.no_grad()
def _init_lstm_gates(w_input: Tensor, w_hidden: Tensor, bias: Tensor | None, hidden: int) -> None:
    """Gates stacked (i, f, g, o) as in nn.LSTM: Xavier input weights, orthogonal recurrent weights per gate,
    bias 0 except FORGET_BIAS on f."""
    for k in range(4):
        nn.init.xavier_uniform_(w_input[k * hidden:(k + 1) * hidden])
        nn.init.orthogonal_(w_hidden[k * hidden:(k + 1) * hidden])
    if bias is not None:
        bias.zero_()
        bias[hidden:2 * hidden] = FORGET_BIAS


def part_dtypes(model: ASRN, features: dict[str, Tensor], present: dict[str, Tensor], mask: Tensor) -> dict[str, str]:
    """Run `model` once (under whatever autocast the caller set) and name the dtype each part's output had:
    {"fusion": "torch.bfloat16", "shots": "torch.float32", ...}, for the parts this variant has."""
    seen: dict[str, str] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            first = output[0] if isinstance(output, tuple) else output
            seen[name] = str(first.dtype)
        return hook

    parts = {"fusion", "shots", "attention", "attention.lstm", "lstm", "project", "classifier"}
    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name in parts]
    try:
        model(features, present, mask)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def asrn_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy over classes (eq. 10), averaged over classes and videos; σ is fused for stability."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asrn.model import (
    ASRN,
    FORGET_BIAS,
    VARIANTS,
    ASRNOutput,
    BoundaryLSTM,
    ModelConfig,
    ModelConfigError,
    asrn_loss,
    part_dtypes,
    straight_through_step,
)
from asrn.store import MODALITIES

DIMS = {"rgb": 6, "motion": 5, "body": 4, "face": 3}
FACE = MODALITIES.index("face")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster than several and does not spin against a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(lengths, seed=0, dims=DIMS):
    """Random padded inputs: features zero on padding, face missing at some steps, body at others."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    features = {m: torch.randn(B, T, d, generator=g) * mask[..., None] for m, d in dims.items()}
    present = {"rgb": mask.clone(), "motion": mask.clone(),
               "body": (torch.rand(B, T, generator=g) > 0.3) & mask,
               "face": (torch.rand(B, T, generator=g) > 0.5) & mask}
    return features, present, mask


def _model(variant="asrn", num_classes=8, hidden=16, dropout=0.7, seed=0):
    torch.manual_seed(seed)
    return ASRN(ModelConfig(dims=dict(DIMS), num_classes=num_classes, variant=variant, hidden=hidden,
                            dropout=dropout))


def _close(a, b, atol=1e-5):
    """Elementwise |a - b| <= atol (torch.testing.assert_close costs seconds of imports on first use)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, rtol=0.0, atol=atol), f"max |a - b| = {(a - b).abs().max().item():.3g} > {atol}"


@pytest.mark.parametrize("num_classes", [8, 16])
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_attention_sums(variant, num_classes):
    features, present, mask = _inputs([7, 4, 1])
    out = _model(variant, num_classes).eval()(features, present, mask)
    assert isinstance(out, ASRNOutput)
    assert out.logits.shape == (3, num_classes)
    assert out.modality_attention.shape == (3, 7, len(MODALITIES))
    for name in ("boundaries", "shot_weights", "temporal_attention"):
        assert getattr(out, name).shape == (3, 7), name
    c = out.modality_attention
    _close(c.sum(-1)[mask], torch.ones(int(mask.sum())))
    assert (c[~mask] == 0).all()
    for m_index, m in enumerate(MODALITIES):
        assert (c[..., m_index][~present[m]] == 0).all(), m
    if variant == "no-mfa":
        _close(c[..., MODALITIES.index("rgb")], mask.float())
    _close(out.temporal_attention.sum(1), torch.ones(3))
    assert (out.temporal_attention[~mask] == 0).all()
    _close(out.shot_weights.sum(1), torch.ones(3))
    assert (out.shot_weights[~mask] == 0).all()
    assert set(out.boundaries.unique().tolist()) <= {0.0, 1.0} and (out.boundaries[~mask] == 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_never_changes_the_output(variant):
    model = _model(variant).eval()
    features, present, mask = _inputs([9, 5], seed=1)
    batch = model(features, present, mask)
    alone = model({m: x[1:, :5] for m, x in features.items()}, {m: p[1:, :5] for m, p in present.items()},
                  mask[1:, :5])
    _close(batch.logits[1:], alone.logits)
    _close(batch.modality_attention[1:, :5], alone.modality_attention)
    _close(batch.temporal_attention[1:, :5], alone.temporal_attention)
    _close(batch.shot_weights[1:, :5], alone.shot_weights)
    assert torch.equal(batch.boundaries[1:, :5], alone.boundaries)
    # and garbage in the padding itself changes nothing either
    noisy = {m: torch.where(mask[..., None], x, torch.full_like(x, 1e3)) for m, x in features.items()}
    _close(model(noisy, present, mask).logits, batch.logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_face_is_ignored_and_gets_no_weight(variant):
    model = _model(variant).eval()
    features, present, mask = _inputs([8, 6], seed=2)
    absent = mask & ~present["face"]
    assert absent.any() and (present["face"] & mask).any()
    changed = dict(features, face=torch.where(absent[..., None], torch.randn_like(features["face"]) * 50,
                                              features["face"]))
    base, other = model(features, present, mask), model(changed, present, mask)
    _close(other.logits, base.logits, atol=0)
    assert (base.modality_attention[..., FACE][absent] == 0).all()
    if variant in ("asrn", "no-gla", "lstm", "mean"):  # the face does count where it is present
        seen = dict(features, face=features["face"] + 10 * present["face"][..., None])
        assert not torch.allclose(model(seen, present, mask).logits, base.logits)


@pytest.mark.parametrize("variant", ["asrn", "no-mfa"])
def test_boundary_detector_gets_gradient(variant):
    model = _model(variant, dropout=0.0).train()
    features, present, mask = _inputs([10, 7, 3], seed=3)
    out = model(features, present, mask)
    assert 0 < out.boundaries[mask].sum() < mask.sum()  # some steps open a shot, some do not
    asrn_loss(out.logits, torch.rand(3, 8).round()).backward()
    shots = model.shots
    for name, param in [("v", shots.boundary_v), ("W_si", shots.boundary_input.weight),
                        ("b_s", shots.boundary_input.bias), ("W_sh", shots.boundary_hidden.weight)]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_boundaries_reset_the_state_and_close_shots():
    torch.manual_seed(0)
    lstm = BoundaryLSTM(8)
    x = torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        lstm.boundary_input.weight.zero_()
        lstm.boundary_hidden.weight.zero_()
        lstm.boundary_v.fill_(1.0)
        lstm.boundary_input.bias.fill_(-10.0)  # never a boundary: one shot, closed at the last valid step
    _, s, omega = lstm(x, mask)
    assert (s == 0).all()
    assert omega.tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 0, 0]]
    with torch.no_grad():
        lstm.boundary_input.bias.fill_(10.0)  # a boundary at every step: every valid step is a shot of its own
    v_global, s, omega = lstm(x, mask)
    assert s.bool().tolist() == mask.tolist()
    assert ((omega > 0) == mask).all()
    changed = x.clone()
    changed[:, :2] += 5.0  # the state is reset at every step, so earlier steps cannot reach later shot features
    _, _, omega_changed = lstm(changed, mask)
    _close(omega_changed[:, 2:] / omega_changed[:, 2:].sum(1, keepdim=True),
           omega[:, 2:] / omega[:, 2:].sum(1, keepdim=True))


def _autograd_loop(lstm, x, mask, cuts=None, forced=None):
    """BoundaryLSTM.forward as it was before issue 14, kept as the reference: eqs. 4-7 as autograd ops, step by
    step, with s_t = cuts_t where forced_t (a where(): no gradient into the detector there). Returns (V_g, s, ω, h)."""
    B, T, H = x.shape
    inputs = F.linear(x, torch.cat([lstm.gate_input.weight, lstm.boundary_input.weight]),
                      torch.cat([lstm.gate_input.bias, lstm.boundary_input.bias]))  # (B, T, 5H)
    w_hidden = torch.cat([lstm.gate_hidden.weight, lstm.boundary_hidden.weight])  # (5H, H)
    h, c = x.new_zeros(B, H), x.new_zeros(B, H)
    gate_in, boundary_in = inputs.split([4 * H, H], dim=-1)
    hs, ss = [], []
    for t in range(T):
        valid, step = mask[:, t].to(x.dtype), mask[:, t].unsqueeze(1)  # (B,), (B, 1)
        gate_h, boundary_h = F.linear(h, w_hidden).split([4 * H, H], dim=1)
        s = straight_through_step((boundary_in[:, t] + boundary_h) @ lstm.boundary_v)  # eq. 5
        if forced is not None:
            s = torch.where(forced[:, t], cuts[:, t].to(x.dtype), s)
        s = s * valid
        keep = (1.0 - s).unsqueeze(1)  # eq. 6
        i, f, g, o = (gate_in[:, t] + keep * gate_h).chunk(4, dim=1)
        c_new = torch.sigmoid(f) * (keep * c) + torch.sigmoid(i) * torch.tanh(g)  # eq. 4
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        h, c = torch.where(step, h_new, h), torch.where(step, c_new, c)
        hs.append(h)
        ss.append(s)
    h_seq, s = torch.stack(hs, dim=1), torch.stack(ss, dim=1)
    next_valid = F.pad(mask[:, 1:], (0, 1), value=False)
    ends = F.pad(s[:, 1:], (0, 1)) + (mask & ~next_valid).to(x.dtype)
    score = lstm.shot_score(h_seq).squeeze(-1)
    top = torch.nan_to_num(score.masked_fill(ends <= 0, float("-inf")).amax(1, keepdim=True).detach(), neginf=0.0)
    weights = ends * torch.exp(score - top)
    omega = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
    return (omega.unsqueeze(-1) * h_seq).sum(1), s, omega, h_seq  # eq. 7


def _with_hidden(lstm, x, mask, cuts=None, forced=None):
    """BoundaryLSTM's outputs and the h_t it computed (what shot_score was applied to)."""
    seen = []
    hook = lstm.shot_score.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        return (*lstm(x, mask, cuts, forced), seen[0])
    finally:
        hook.remove()


@pytest.mark.parametrize("forcing", ["none", "some-videos"])
@pytest.mark.parametrize("lengths", [[7, 7, 7], [7, 5, 1, 3], [5, 2, 0]], ids=["full", "padded", "empty-steps"])
def test_boundary_lstm_matches_the_autograd_loop(lengths, forcing):
    """Same V_g, s, ω, h and the same gradients (x and every parameter, straight-through included) as the autograd
    loop, in float64, with boundaries firing and padding (T = 7: [5, 2, 0] leaves steps where no video is valid),
    and with s_t forced to given cuts on the first video (boundaries="cuts" on a video whose shots are known).
    gradcheck does not apply: s is a step function whose gradient is, by design, σ' (straight_through_step)."""
    torch.manual_seed(1)
    lstm = BoundaryLSTM(6).double()
    with torch.no_grad():
        lstm.boundary_v.mul_(8.0)  # |vᵀ(...)| well away from 0: boundaries fire at about half of the steps
    B, T = len(lengths), 7
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(B, T, 6, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(B, 6), torch.randn(B, T), torch.randn(B, T), torch.randn(B, T, 6)]  # of V_g, s, ω, h
    cuts = forced = None
    if forcing == "some-videos":
        cuts = torch.zeros(B, T, dtype=torch.bool)
        cuts[0, [0, 2, 3]] = True
        forced = torch.zeros(B, T, dtype=torch.bool)
        forced[0] = mask[0]

    def outputs_and_grads(forward):
        out = forward(lstm, x, mask, cuts, forced)
        loss = sum((o * w.double()).sum() for o, w in zip(out, weights, strict=True))
        return out, torch.autograd.grad(loss, [x, *lstm.parameters()])

    (v_global, s, omega, h), grads = outputs_and_grads(_with_hidden)
    (v_ref, s_ref, omega_ref, h_ref), grads_ref = outputs_and_grads(_autograd_loop)
    assert 0 < s[mask].sum() < mask.sum() and (s[~mask] == 0).all()
    assert torch.equal(s, s_ref)
    if forced is not None:
        assert s[0].bool().tolist() == (cuts[0] & mask[0]).tolist()
    for name, a, b in [("V_g", v_global, v_ref), ("omega", omega, omega_ref), ("h", h, h_ref)]:
        assert torch.allclose(a, b, rtol=0.0, atol=1e-12), name
    for b, length in enumerate(lengths):  # padding carries the state through: h stays at the last valid step's
        assert (h[b, length:] == (h[b, length - 1] if length else 0.0)).all()
    names = ["x", *(name for name, _ in lstm.named_parameters())]
    for name, a, b in zip(names, grads, grads_ref, strict=True):
        assert a.abs().max() > 0 or name.startswith("shot_score.bias"), name  # every gradient is exercised
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), f"{name}: max |a - b| = {(a - b).abs().max():.3g}"


def test_boundary_lstm_keeps_its_parameters():
    """Old checkpoints load: the BDLSTM's state_dict keys and shapes are those it always had."""
    H = 5
    shapes = {k: tuple(v.shape) for k, v in BoundaryLSTM(H).state_dict().items()}
    assert shapes == {"gate_input.weight": (4 * H, H), "gate_input.bias": (4 * H,), "gate_hidden.weight": (4 * H, H),
                      "boundary_input.weight": (H, H), "boundary_input.bias": (H,), "boundary_hidden.weight": (H, H),
                      "boundary_v": (H,), "shot_score.weight": (1, H), "shot_score.bias": (1,)}
    keys = [k for k in _model().state_dict() if k.startswith("shots.")]
    assert keys == [f"shots.{k}" for k in shapes]


def test_boundary_lstm_without_grad_and_under_autocast():
    """no_grad gives the same outputs; under bf16 autocast (the GPU recipe's; CPU here) the recurrence still runs in
    float32, equal to its float32 run, and trains the parameters."""
    torch.manual_seed(2)
    lstm = BoundaryLSTM(8)
    x, mask = torch.randn(3, 6, 8), torch.arange(6)[None, :] < torch.tensor([6, 4, 1])[:, None]
    with_grad = lstm(x, mask)
    with torch.no_grad():
        for a, b in zip(lstm(x, mask), with_grad, strict=True):
            assert torch.equal(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v_global, s, omega = lstm(x, mask)
    assert s.dtype == v_global.dtype == torch.float32  # the recurrence ran in float32, autocast or not
    assert torch.equal(v_global, with_grad[0]) and torch.equal(s, with_grad[1])
    assert set(s.unique().tolist()) <= {0.0, 1.0} and (s[~mask] == 0).all() and torch.isfinite(v_global).all()
    v_global.float().sum().backward()
    for name, param in lstm.named_parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32, name


def test_overfits_a_planted_signal():
    torch.manual_seed(0)
    B, T, C = 16, 6, 8
    features, present, mask = _inputs([T] * B, seed=4)
    targets = (torch.rand(B, C) > 0.5).float()
    # the labels are written into the face feature, at the steps where a face exists
    face = torch.randn(B, T, C) * 0.1 + 2 * (2 * targets[:, None, :] - 1)
    features = dict(features, face=torch.where(present["face"][..., None], face, torch.randn(B, T, C) * 5))
    model = ASRN(ModelConfig(dims={**DIMS, "face": C}, num_classes=C, hidden=16, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = asrn_loss(model(features, present, mask).logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_initialisation_keeps_the_signal(variant):
    """Forget-gate biases start at FORGET_BIAS, the other LSTM biases at 0, recurrent weights orthogonal per gate;
    and a fresh model's logits vary across videos (PyTorch's default init gave ~0.01, which left SGD on the prior)."""
    model = _model(variant, dropout=0.0)
    H = model.config.hidden
    gates = []
    if variant in ("asrn", "no-mfa"):
        gates.append((model.shots.gate_input.bias, model.shots.gate_hidden.weight))
        gates.append((model.attention.lstm.bias_ih_l0 + model.attention.lstm.bias_hh_l0,
                      model.attention.lstm.weight_hh_l0))
    elif variant in ("no-gla", "lstm"):
        gates.append((model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0, model.lstm.weight_hh_l0))
    for bias, w_hidden in gates:
        expected = torch.zeros(4 * H)
        expected[H:2 * H] = FORGET_BIAS
        _close(bias.detach(), expected, atol=0)
        for k in range(4):
            block = w_hidden.detach()[k * H:(k + 1) * H]
            _close(block @ block.T, torch.eye(H), atol=1e-4)
    torch.manual_seed(5)
    features, present, mask = _inputs([9] * 32, seed=5)
    features = {m: x + torch.randn(32, 1, x.shape[-1]) for m, x in features.items()}  # per-video offsets
    with torch.no_grad():
        logits = model.eval()(features, present, mask).logits
    assert logits.std(0).mean() > 0.1  # default init: 0.02-0.03 for asrn, no-gla, no-mfa; now 0.2-0.5


def test_loss_is_eq_10_averaged():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    _close(asrn_loss(logits, targets), expected, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        asrn_loss(logits, targets[:, :1])


@pytest.mark.parametrize(("change", "key"), [
    ({"variant": "transformer"}, "variant"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"dims": {**DIMS, "face": 0}}, "face"),
    ({"dims": {**DIMS, "audio": 8}}, "audio"),
    ({"dims": {"motion": 5}}, "rgb"),
    ({"num_classes": 0}, "num_classes"),
    ({"hidden": -1}, "hidden"),
])
def test_bad_config_raises_naming_the_key(change, key):
    kwargs = {"dims": dict(DIMS), "num_classes": 8, **change}
    with pytest.raises(ModelConfigError, match=key):
        ModelConfig(**kwargs)


def test_bad_inputs_raise():
    model = _model().eval()
    features, present, mask = _inputs([4, 2])
    with pytest.raises(ValueError, match="prefix"):
        model(features, present, mask.flip(1))
    with pytest.raises(ValueError, match="'body'"):
        model({m: x for m, x in features.items() if m != "body"}, present, mask)
    with pytest.raises(ValueError, match="'face'"):
        model(dict(features, face=features["face"][..., :2]), present, mask)


def test_input_stats_standardise_and_travel_in_the_state_dict():
    torch.manual_seed(0)
    config = ModelConfig(dims={"rgb": 6, "motion": 5, "body": 4, "face": 3}, num_classes=8, hidden=16, dropout=0.0)
    model = ASRN(config).eval()
    B, T = 2, 5
    features = {m: torch.randn(B, T, d) for m, d in config.dims.items()}
    present = {m: torch.ones(B, T, dtype=torch.bool) for m in config.dims}
    mask = torch.ones(B, T, dtype=torch.bool)
    shift = {m: (np.full(d, 10.0, np.float32), np.full(d, 2.0, np.float32)) for m, d in config.dims.items()}
    model.set_input_stats(shift)
    moved = {m: x * 2.0 + 10.0 for m, x in features.items()}  # the same inputs in the stats' units
    plain = ASRN(config).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("input_")}, strict=False)
    torch.testing.assert_close(model(moved, present, mask).logits, plain(features, present, mask).logits)
    restored = ASRN(config).eval()
    restored.load_state_dict(model.state_dict())
    torch.testing.assert_close(restored(moved, present, mask).logits, model(moved, present, mask).logits)
    with pytest.raises(ValueError, match="input stats of 'face'"):
        model.set_input_stats({"face": (np.zeros(7), np.ones(7))})


RECURRENT_PARTS = {"asrn": ("shots", "attention.lstm"), "no-mfa": ("shots", "attention.lstm"), "no-gla": ("lstm",),
                   "lstm": ("lstm",), "tsn": (), "mean": ()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_keeps_recurrences_in_float32(variant):
    """Under bf16 autocast (CPU here, CUDA on a GPU) every LSTM runs in float32 and the projections in bf16; the
    gradients stay finite and the loss stays close to the float32 model's."""
    features, present, mask = _inputs([9, 6, 3, 1], seed=3)
    targets = (torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    model = _model(variant, hidden=32).eval()  # eval: no dropout, so the two runs see the same network
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dtypes = part_dtypes(model, features, present, mask)
        low = asrn_loss(model(features, present, mask).logits.float(), targets)
    assert set(RECURRENT_PARTS[variant]) <= set(dtypes)
    for part in RECURRENT_PARTS[variant]:
        assert dtypes[part] == "torch.float32", (part, dtypes)
    assert dtypes["classifier"] == "torch.bfloat16"  # autocast did run: the parts not chosen otherwise are bf16
    low.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    full = asrn_loss(model(features, present, mask).logits, targets)
    assert abs(low.item() - full.item()) < 0.02 * full.item(), (low.item(), full.item())


def _forced_inputs(lengths, seed=0):
    features, present, mask = _inputs(lengths, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    shot_start = (torch.rand(mask.shape, generator=g) < 0.3) & mask
    shot_start[:, 0] = mask[:, 0]
    return features, present, mask, shot_start


def test_cuts_form_uses_the_store_shots_where_known_and_the_detector_elsewhere():
    """boundaries="cuts": s_t equals the given shot starts on videos whose shots are known, ω sits on the steps
    that close those shots, and the paper's detector decides the unknown videos (as the unsupervised form does)."""
    features, present, mask, shot_start = _forced_inputs([9, 6, 4], seed=5)
    known = torch.tensor([True, True, False])
    cuts = _model().eval()
    with torch.no_grad():
        cuts.shots.boundary_v.mul_(8.0)  # the detector fires at some steps, so that "unknown" is visible
    paper = _model().eval()
    paper.load_state_dict(cuts.state_dict())
    paper.config.boundaries = "unsupervised"
    out = cuts(features, present, mask, shot_start, known)
    ref = paper(features, present, mask, shot_start, known)
    assert torch.equal(out.boundaries[:2].bool(), shot_start[:2])
    for b in range(2):
        last = torch.arange(mask.shape[1]) == mask[b].sum() - 1
        ends = torch.cat([shot_start[b, 1:], torch.tensor([False])]) | last
        assert ((out.shot_weights[b] > 0) == (ends & mask[b])).all()
    assert torch.equal(out.boundaries[2], ref.boundaries[2])
    assert not torch.equal(out.boundaries[:2], ref.boundaries[:2])  # the unsupervised form ignores the cuts
    assert torch.equal(paper(features, present, mask).boundaries, ref.boundaries)


def test_cuts_form_sends_no_gradient_into_the_detector_from_forced_steps():
    features, present, mask, shot_start = _forced_inputs([8, 8], seed=6)
    model = _model(dropout=0.0).train()
    out = model(features, present, mask, shot_start, torch.tensor([True, True]))
    asrn_loss(out.logits, torch.rand(2, 8).round()).backward()
    assert model.shots.boundary_v.grad.abs().sum() == 0 and model.shots.boundary_input.weight.grad.abs().sum() == 0
    assert model.shots.gate_input.weight.grad.abs().sum() > 0 and model.shots.shot_score.weight.grad.abs().sum() > 0


def test_boundaries_form_is_checked():
    with pytest.raises(ModelConfigError, match="boundaries 'learnt' is unknown"):
        ModelConfig(dims=dict(DIMS), num_classes=8, boundaries="learnt")
    assert ModelConfig(dims=dict(DIMS), num_classes=8).boundaries == "cuts"


def test_a_checkpoint_from_before_the_boundaries_field_loads_as_the_unsupervised_form(tmp_path, rewrite_checkpoint):
    """Such a checkpoint was trained with the paper's detector alone; it must keep predicting that way."""
    from asrn.checkpoint import load_checkpoint, write_checkpoint
    from asrn.store import StoreInfo

    model = _model()
    written = write_checkpoint(tmp_path / "best.pt", model.state_dict(), model.config, {}, "sub",
                               StoreInfo("lite", dict(DIMS), 2.0), epoch=1, val_metrics={})
    assert load_checkpoint(written)[0].config.boundaries == "cuts"
    old = rewrite_checkpoint(written, tmp_path / "old.pt", lambda c: c["model_config"].pop("boundaries"))
    loaded, _ = load_checkpoint(old)
    assert loaded.config.boundaries == "unsupervised"


def test_the_train_flag_reaches_the_model():
    from asrn.train import TrainConfig, TrainConfigError

    config = TrainConfig(features="store", task="sub", out="run", boundaries="unsupervised")
    assert config.model_config(DIMS).boundaries == "unsupervised"
    assert TrainConfig(features="store", task="sub", out="run").model_config(DIMS).boundaries == "cuts"
    with pytest.raises(TrainConfigError, match="unknown boundaries 'shots'"):
        TrainConfig(features="store", task="sub", out="run", boundaries="shots")


def test_the_training_loop_feeds_the_model_the_stores_shots():
    """loop.evaluate scores a collated batch with its shots: the same as the model given them, not as without."""
    from asrn.loop import evaluate
    from asrn.sequence import collate
    from asrn.synth_features import generate_videos

    videos = [s.video for s in generate_videos(6, seed=1, dims=DIMS)]
    batch = collate(videos, "sub")
    torch.manual_seed(0)
    model = ASRN(ModelConfig(dims=dict(DIMS), num_classes=8, hidden=16)).eval()
    with torch.no_grad():
        model.shots.boundary_v.mul_(8.0)  # the paper's detector fires elsewhere than the cuts
        with_shots = torch.sigmoid(model(**batch.inputs()).logits)
        without = torch.sigmoid(model(batch.features, batch.present, batch.mask).logits)
    _, scores, _ = evaluate(model, [batch], torch.device("cpu"))
    assert batch.shot_known.all() and np.allclose(scores, with_shots.numpy(), atol=1e-6)
    assert not np.allclose(scores, without.numpy(), atol=1e-4)

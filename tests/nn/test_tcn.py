"""TCN / TemporalBlock: shapes, causality, identical state_dicts on both paths, fused (Triton
through the interpreter) vs reference parity in eval and training, and a short training run that
gives the same losses on both paths; the same on CUDA (`gpu`)."""
from __future__ import annotations

import pytest
import torch

from affaccel.nn.tcn import TCN, TemporalBlock
from affaccel.ops import causal_conv as cc

from gpu_cases import MODES, TCN_BT, mode_dtype, tcn_pair
from tolerances import tol
from triton_mode import run_in_fresh_process, use_compiled_cuda, use_interpreter


@pytest.fixture
def interp(monkeypatch):
    use_interpreter(monkeypatch, cc)


@pytest.fixture
def cuda_mode(monkeypatch, request):
    """Compiled CUDA kernels in the precision mode of the test's `mode` parameter."""
    use_compiled_cuda(monkeypatch, cc, tf32=request.node.callspec.params["mode"] == "tf32")


def test_interpreter_tests_in_fresh_process():
    if cc.triton_mode() != "compiled":
        pytest.skip("the interpreter tests ran in this process")
    run_in_fresh_process(__file__, "not gpu", interpret=True)


@pytest.mark.gpu
def test_gpu_tests_in_fresh_process():
    if cc.triton_mode() != "interpreted":
        pytest.skip("the CUDA tests ran in this process")
    run_in_fresh_process(__file__, "gpu", interpret=False)


def _pair(seed=0, **kw):
    torch.manual_seed(seed)
    fused = TCN(**kw, fused=True)
    torch.manual_seed(seed)
    ref = TCN(**kw, fused=False)
    return fused, ref


def test_shapes_receptive_field_and_dilations():
    tcn = TCN(6, [8, 8, 5], kernel_size=3)
    assert [b.dilation for b in tcn.blocks] == [1, 2, 4]
    assert tcn.blocks[0].downsample is not None and tcn.blocks[1].downsample is None
    assert tcn.receptive_field == 1 + 2 * 2 * 7
    assert tcn(torch.randn(2, 11, 6)).shape == (2, 11, 5)
    with pytest.raises(ValueError, match=r"\[B, T, 6\]"):
        tcn(torch.randn(2, 11, 7))
    with pytest.raises(ValueError, match="activation"):
        TCN(6, [8], activation="tanh")
    with pytest.raises(ValueError, match="channels"):
        TCN(6, [])


def test_reference_tcn_is_causal_with_the_stated_receptive_field():
    tcn = TCN(3, [4, 4], kernel_size=2, activation="leaky_relu").eval()  # no dead paths
    x = torch.randn(1, 30, 3)
    t0 = 20
    x2 = x.clone()
    x2[:, t0] += 1.0
    y, y2 = tcn(x), tcn(x2)
    changed = (y - y2).abs().amax(dim=(0, 2)) > 0
    assert not changed[:t0].any()                              # nothing before t0 moves
    assert changed[t0:t0 + tcn.receptive_field].all()          # ... everything in its reach does
    assert not changed[t0 + tcn.receptive_field:].any()


@pytest.mark.parametrize("weight_norm", [False, True])
def test_state_dict_identical_on_both_paths(weight_norm):
    kw = dict(in_channels=5, channels=[6, 6], kernel_size=3, weight_norm=weight_norm)
    fused, ref = _pair(**kw)
    sd_f, sd_r = fused.state_dict(), ref.state_dict()
    assert list(sd_f) == list(sd_r)
    assert all(torch.equal(sd_f[k], sd_r[k]) for k in sd_f)
    assert any("parametrizations.weight.original" in k for k in sd_f) == weight_norm
    # a checkpoint of one path loads into the other, and the ordinary nn.Conv1d keys are there
    other = TCN(**kw, fused=None)
    other.load_state_dict(sd_f)
    assert "blocks.0.conv1.bias" in sd_f and "blocks.0.downsample.weight" in sd_f


@pytest.mark.parametrize("activation,weight_norm,dropout,train", [
    ("relu", False, 0.0, False),
    ("gelu", True, 0.0, True),
    ("leaky_relu", False, 0.3, True),    # dropout active: conv2's residual epilogue not fused
    ("relu", True, 0.3, False),           # eval: dropout inactive, residual fused
])
def test_fused_matches_reference(interp, activation, weight_norm, dropout, train):
    kw = dict(in_channels=5, channels=[7, 7], kernel_size=3, dropout=dropout,
              activation=activation, weight_norm=weight_norm)
    fused, ref = _pair(**kw)
    fused.train(train)
    ref.train(train)
    x = torch.randn(2, 13, 5)
    xf, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(1)  # same dropout masks: both paths draw them in the same order
    yf = fused(xf)
    torch.manual_seed(1)
    yr = ref(xr)
    torch.testing.assert_close(yf, yr, **tol(torch.float32))
    gy = torch.randn_like(yr)
    yf.backward(gy)
    yr.backward(gy)
    torch.testing.assert_close(xf.grad, xr.grad, **tol(torch.float32))
    for (name, pf), (_, pr) in zip(fused.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, **tol(torch.float32), msg=lambda m: f"{name}: {m}")


def _train(model, steps, seed=0, device="cpu", dtype=torch.float32, B=2, T=20):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, model.in_channels, generator=g).to(device, dtype)
    # target: a causal function of the input the TCN can learn (a lagged, smoothed channel mix)
    target = torch.tanh(x[..., :model.out_channels].cumsum(1) / 4).roll(2, dims=1)
    # plain SGD: Adam's per-coordinate normalisation would blow rounding-level gradient
    # differences on near-zero coordinates up to full-size steps
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).float(), target.float())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_short_training_gives_matching_losses(interp):
    fused, ref = _pair(in_channels=6, channels=[5, 2], kernel_size=2)
    lf = _train(fused, 5)
    lr = _train(ref, 5)
    assert lf[-1] < 0.9 * lf[0]  # it learns
    torch.testing.assert_close(torch.tensor(lf), torch.tensor(lr), rtol=1e-4, atol=1e-6)


def test_fused_none_dispatches_by_device(interp, monkeypatch):
    calls = []
    orig = cc.CausalConv1dFn.apply
    monkeypatch.setattr(cc.CausalConv1dFn, "apply", lambda *a: calls.append(1) or orig(*a))
    tcn = TCN(3, [4], fused=None).eval()
    tcn(torch.randn(1, 5, 3))
    assert len(calls) == 2  # conv1 and conv2 (with the fused residual) on the Triton path
    tcn.fused = False
    assert all(b.fused is False for b in tcn.blocks)
    tcn(torch.randn(1, 5, 3))
    assert len(calls) == 2
    assert isinstance(tcn.blocks[0], TemporalBlock)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cuda_fused_matches_reference_and_trains(cuda_mode, mode):
    """The model shape of gpu_cases.TCN_KW (aligned channels, like the real 512 -> 256 -> 256);
    tf32: both paths through TF32 (cuDNN's and ours), compared with the TF32 tolerance."""
    dtype = mode_dtype(mode)
    fused, ref = tcn_pair()
    fused, ref = fused.cuda().to(dtype), ref.cuda().to(dtype)
    B, T = TCN_BT
    x = torch.randn(4, T, fused.in_channels, device="cuda", dtype=dtype)
    torch.testing.assert_close(fused.eval()(x).float(), ref.eval()(x).float(), **tol(mode))
    fused.train()
    ref.train()
    lf = _train(fused, 8, device="cuda", dtype=dtype, B=B, T=T)
    lr = _train(ref, 8, device="cuda", dtype=dtype, B=B, T=T)
    assert lf[-1] < lf[0]
    torch.testing.assert_close(torch.tensor(lf), torch.tensor(lr), **tol(mode))


def _ref_stack(tcn, x):
    for b in tcn.blocks:
        x = b.forward_ref(x)
    return x


@pytest.fixture
def cpu_reference(monkeypatch):
    """CPU tensors take the reference (the default outside Triton's interpreter)."""
    monkeypatch.delenv("AFFACCEL_TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("activation,weight_norm,widths", [
    ("relu", False, [8, 8]), ("gelu", True, [5, 7, 3]), ("leaky_relu", False, [6])])
@pytest.mark.parametrize("T", [1, 2, 7, 31, 300])
def test_cpu_channels_first_path_matches_reference(cpu_reference, activation, weight_norm, widths, T):
    torch.manual_seed(T)
    tcn = TCN(6, widths, kernel_size=3, dropout=0.3, activation=activation,
              weight_norm=weight_norm).eval()
    x = torch.randn(3, T, 12)[:, :, ::2]          # non-contiguous input
    assert tcn.channels_first_path(x)
    y = tcn(x)
    assert y.shape == (3, T, widths[-1])
    torch.testing.assert_close(y, _ref_stack(tcn, x), **tol("float32"))
    x64 = x.double()
    tcn64 = tcn.double()
    torch.testing.assert_close(tcn64(x64), _ref_stack(tcn64, x64), **tol("float64"))


def test_cpu_channels_first_path_choice_and_gradients(cpu_reference):
    torch.manual_seed(0)
    tcn = TCN(4, [5, 5], dropout=0.3)
    x = torch.randn(2, 9, 4, requires_grad=True)
    assert not tcn.train().channels_first_path(x)     # dropout active: channels-last masks
    tcn.fused = False
    assert not tcn.eval().channels_first_path(x)      # fused=False forces the step-by-step reference
    tcn.fused = None
    assert tcn.channels_first_path(x)
    tcn_p0 = TCN(4, [5, 5], dropout=0.0).train()
    assert tcn_p0.channels_first_path(x)              # p = 0: nothing to drop, fast path in training
    gx = torch.autograd.grad(tcn_p0(x).square().sum(), [x, *tcn_p0.parameters()])
    gr = torch.autograd.grad(_ref_stack(tcn_p0, x).square().sum(), [x, *tcn_p0.parameters()])
    for a, b in zip(gx, gr):
        torch.testing.assert_close(a, b, **tol("float32"))

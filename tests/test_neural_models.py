"""Behaviour particular to single neural families (the registry-wide checks are in test_models.py):
the transformer's causal mask, PatchTST's patching, N-HiTS's interpolation basis, TimesNet's
periods, InceptionTime's shortcuts, DeepAR's likelihoods and own std, TFT's variable selection
and interpretable attention, iTransformer's attention across variates, N-BEATS's bases and
stacks, and the validation of each family's params."""
from __future__ import annotations

import pytest
import torch

from alphafactory import models
from alphafactory.errors import ConfigError
from alphafactory.models import dist, export
from alphafactory.models.deepar import DeepARNet, DeepARParams
from alphafactory.models.inceptiontime import InceptionTimeNet, InceptionTimeParams
from alphafactory.models.itransformer import ITransformerNet, ITransformerParams
from alphafactory.models.nbeats import NBEATSNet, NBEATSParams
from alphafactory.models.nhits import NHITSNet, NHITSParams, interpolation_basis
from alphafactory.models.patchtst import PatchTSTNet, PatchTSTParams, patch_layout
from alphafactory.models.tft import TFTNet, TFTParams
from alphafactory.models.timesnet import TimesBlock, TimesNetParams, top_periods
from alphafactory.models.transformer import TransformerNet, TransformerParams


@pytest.mark.parametrize("pos_encoding", ["sinusoidal", "learned"])
def test_transformer_state_at_t_depends_on_steps_up_to_t_only(pos_encoding):
    torch.manual_seed(0)
    L, k = 10, 6
    net = TransformerNet(5, 2, TransformerParams(pos_encoding=pos_encoding), max_len=L).eval()
    x = torch.randn(4, L, 5)
    x2 = x.clone()
    x2[:, k:] = torch.randn(4, L - k, 5)  # change steps k .. L-1
    with torch.no_grad():
        a, b = net.encode(x), net.encode(x2)
    assert a.shape == (4, L, 32)
    torch.testing.assert_close(a[:, :k], b[:, :k], rtol=0, atol=1e-6)  # steps before k: untouched
    assert (a[:, k:] - b[:, k:]).abs().amax(dim=(0, 2)).min() > 1e-3  # every step from k on moved
    x3 = x.clone()
    x3[:, 0] += 1.0  # the first step reaches the last step's state, hence the forecast
    with torch.no_grad():
        assert (net(x3) - net(x)).abs().max() > 1e-4


def test_transformer_rejects_window_longer_than_lookback():
    net = TransformerNet(3, 1, TransformerParams(), max_len=8)
    with pytest.raises(ValueError, match="window of 9 bars, longer than the lookback 8"):
        net(torch.zeros(1, 9, 3))


def test_patchtst_pads_the_start_so_the_last_patch_ends_at_the_last_bar():
    assert patch_layout(32, 8, 4) == (7, 0)
    assert patch_layout(10, 4, 4) == (3, 2)  # 2 bars of padding: patches [-2..1], [2..5], [6..9]
    assert patch_layout(8, 8, 4) == (1, 0)
    net = PatchTSTNet(2, 3, PatchTSTParams(patch_len=4, stride=4), lookback=10)
    x = torch.arange(20, dtype=torch.float32).view(1, 10, 2)  # feature f at bar t: 2t + f
    p = net.patches(x)  # (1, F, P, patch_len)
    assert p.shape == (1, 2, 3, 4)
    torch.testing.assert_close(p[0, 1, -1], x[0, 6:, 1])  # last patch = last 4 bars
    torch.testing.assert_close(p[0, 0, 0], torch.tensor([0.0, 0.0, 0.0, 2.0]))  # first bar repeated
    assert net(torch.randn(5, 10, 2)).shape == (5, 3)


def test_patchtst_channels_are_independent_until_the_head():
    """Changing one feature changes the encoded patches of that feature only."""
    torch.manual_seed(0)
    net = PatchTSTNet(3, 1, PatchTSTParams(), lookback=16).eval()
    x = torch.randn(2, 16, 3)
    x2 = x.clone()
    x2[:, :, 1] = torch.randn(2, 16)

    def states(x: torch.Tensor) -> torch.Tensor:  # (B, F, P, d)
        z = net.embed(net.patches(x)) + net.pos
        return net.encoder(z.flatten(0, 1)).view(*z.shape)

    with torch.no_grad():
        a, b = states(x), states(x2)
    torch.testing.assert_close(a[:, [0, 2]], b[:, [0, 2]], rtol=0, atol=1e-6)
    assert (a[:, 1] - b[:, 1]).abs().max() > 1e-3


def test_patchtst_patch_longer_than_lookback_is_an_error_naming_both():
    with pytest.raises(ConfigError, match="patch_len: got 16, longer than train.lookback 8"):
        models.create("patchtst", {"patch_len": 16}, horizons=(1,), lookback=8)


def test_nhits_basis_interpolates_knots_at_the_horizons():
    b = interpolation_basis((1, 5, 20), 2)  # knots at bars 1 and 20
    torch.testing.assert_close(b, torch.tensor([[1.0, 15 / 19, 0.0], [0.0, 4 / 19, 1.0]]))
    torch.testing.assert_close(interpolation_basis((1, 5, 20), 1), torch.ones(1, 3))
    full = interpolation_basis((1, 2, 3), 3)  # one knot per horizon: the identity
    torch.testing.assert_close(full, torch.eye(3))
    torch.testing.assert_close(interpolation_basis((3, 1, 2), 3), torch.eye(3)[:, [2, 0, 1]])


def test_nhits_coarse_stack_gives_a_linear_term_structure():
    """A stack with 2 knots forecasts values on a straight line over the horizons."""
    torch.manual_seed(0)
    p = NHITSParams(pool_sizes=(8,), downsample=(10,))  # ceil(20 / 10) = 2 knots
    net = NHITSNet(4, (1, 5, 20), p, lookback=6).eval()  # pool kernel 8 > lookback 6: whole window
    with torch.no_grad():
        out = net(torch.randn(7, 6, 4))  # (B, H)
    slope = (out[:, 2] - out[:, 0]) / 19
    torch.testing.assert_close(out[:, 1], out[:, 0] + 4 * slope, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, params, match", [
    ("gru", {"hidden": 0}, r"neural.gru.hidden: got 0, expected >= 1"),
    ("mlp", {"dropout": 1.0}, r"neural.mlp.dropout: got 1.0"),
    ("transformer", {"d_model": 30, "heads": 4}, r"d_model: got 30 with heads 4"),
    ("transformer", {"pos_encoding": "rotary"}, r"pos_encoding: got 'rotary'"),
    ("patchtst", {"patch_len": 4, "stride": 5}, r"stride: got 5 with patch_len 4"),
    ("nhits", {"pool_sizes": [4, 1], "downsample": [1]}, r"pool_sizes \[4, 1\] and downsample \[1\]"),
    ("nhits", {"pool_sizes": []}, r"neural.nhits.pool_sizes: got \[\]"),
    ("timesnet", {"top_k": 0}, r"neural.timesnet.top_k: got 0, expected >= 1"),
    ("inceptiontime", {"kernel_sizes": []}, r"neural.inceptiontime.kernel_sizes: got \[\]"),
    ("deepar", {"df": 2.0}, r"neural.deepar.df: got 2.0, expected > 2"),
    ("deepar", {"head": "laplace"}, r"neural.deepar.head: got 'laplace'"),
    ("tft", {"d_model": 10, "heads": 4}, r"neural.tft.d_model: got 10 with heads 4"),
    ("itransformer", {"d_model": 30, "heads": 4}, r"neural.itransformer.d_model: got 30 with heads 4"),
    ("nbeats", {"stacks": ["trend", "wavelet"]}, r"neural.nbeats.stacks.*'wavelet'"),
    ("nbeats", {"stacks": []}, r"neural.nbeats.stacks: got \[\]"),
])
def test_bad_params_are_errors_naming_the_value(name, params, match):
    with pytest.raises(ConfigError, match=match):
        models.create(name, params, horizons=(1, 5))


def test_tft_selects_variables_and_attends_to_past_bars_only():
    """Variable selection weights are a distribution over the features at each bar; the
    interpretable attention (heads averaged) is a distribution over the window's bars; a feature
    changed after bar k leaves the selection weights of bars before k as they were."""
    torch.manual_seed(0)
    L, n_feat = 10, 5
    net = TFTNet(n_feat, 2, TFTParams()).eval()
    x = torch.randn(4, L, n_feat)
    with torch.no_grad():
        v, a = net.variable_weights(x), net.attention(x)
    assert v.shape == (4, L, n_feat) and a.shape == (4, L)
    torch.testing.assert_close(v.sum(-1), torch.ones(4, L))
    torch.testing.assert_close(a.sum(-1), torch.ones(4))
    assert (v >= 0).all() and (a >= 0).all()
    assert v.std(-1).min() > 0 and a.std(-1).min() > 0  # not uniform: weights depend on the inputs
    x2 = x.clone()
    x2[:, 6:, 2] += 3.0
    with torch.no_grad():
        v2 = net.variable_weights(x2)
    torch.testing.assert_close(v2[:, :6], v[:, :6], rtol=0, atol=1e-6)
    assert (v2[:, 6:] - v[:, 6:]).abs().max() > 1e-3
    with torch.no_grad():  # the first bar reaches the forecast (through the LSTM and the attention)
        x3 = x.clone()
        x3[:, 0] += 1.0
        assert (net(x3) - net(x)).abs().max() > 1e-4


def test_tft_attention_heads_share_one_value_map():
    net = TFTNet(3, 1, TFTParams(d_model=8, heads=4))
    assert net.attn.v.weight.shape == (2, 8)  # d_model / heads values, one map for every head
    assert net.attn.q.weight.shape == net.attn.k.weight.shape == (8, 8)  # a query and a key map per head


def test_itransformer_attends_across_variates_and_is_permutation_equivariant():
    """A token is one feature's window: permuting the features permutes the encoded tokens, and
    changing one feature's series moves every token (attention mixes the variates)."""
    torch.manual_seed(0)
    L, n_feat = 12, 5
    net = ITransformerNet(n_feat, 2, ITransformerParams(), lookback=L).eval()
    x = torch.randn(3, L, n_feat)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        tok = net.tokens(x)
        assert tok.shape == (3, n_feat, 32)
        torch.testing.assert_close(net.tokens(x[:, :, perm]), tok[:, perm], rtol=0, atol=1e-5)
        x2 = x.clone()
        x2[:, :, 1] = torch.randn(3, L)
        moved = (net.tokens(x2) - tok).abs().amax(dim=(0, 2))
    assert (moved > 1e-3).all(), moved  # every variate's token, not only feature 1's
    with pytest.raises(ValueError, match="window of 11 bars, expected the lookback 12"):
        net(torch.zeros(1, 11, n_feat))


def test_nbeats_trend_stack_forecasts_a_polynomial_of_the_horizon():
    """Interpretable N-BEATS: a degree-1 trend stack's forecast is linear in h, and the stack
    forecasts add up to the forecast."""
    torch.manual_seed(0)
    horizons = (1, 2, 4, 7, 10)
    net = NBEATSNet(3, horizons, NBEATSParams(stacks=("trend", "seasonality"), degree=1), lookback=6).eval()
    with torch.no_grad():
        x = torch.randn(8, 6, 3)
        parts, out = net.stack_forecasts(x), net(x)
    assert parts.shape == (2, 8, len(horizons))
    torch.testing.assert_close(parts.sum(0), out)
    h = torch.tensor(horizons, dtype=torch.float32)
    trend = parts[0]
    slope = (trend[:, -1] - trend[:, 0]) / (h[-1] - h[0])
    torch.testing.assert_close(trend, trend[:, :1] + slope[:, None] * (h - h[0]), rtol=0, atol=1e-5)
    assert (parts[1] - parts[1].mean(1, keepdim=True)).abs().max() > 1e-4  # seasonality is not linear


def test_nbeats_shared_weights_and_generic_stacks():
    shared = NBEATSNet(4, (1, 5), NBEATSParams(stacks=("trend", "seasonality"), blocks=3), lookback=8)
    own = NBEATSNet(4, (1, 5), NBEATSParams(stacks=("generic",), blocks=3, share_weights=False), lookback=8)
    assert len(shared.blocks) == 2 and len(shared.schedule) == 6  # one set of weights per stack
    assert len(own.blocks) == 3 and own.blocks[0].basis_f.out_features == 2  # learned basis to the horizons
    assert own(torch.randn(5, 8, 4)).shape == (5, 2)


def test_nbeats_generic_exports_to_onnx(tmp_path):
    """The conformance suite exports the default (interpretable) N-BEATS; the generic one too."""
    import numpy as np

    from alphafactory.models.base import XY

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((200, 8, 4)).astype(np.float32), rng.standard_normal((200, 2)).astype(np.float32)
    m = models.create("nbeats", {"stacks": ["generic"], "share_weights": False, "hidden": 16}, horizons=(1, 5),
                      lookback=8, trainer={"epochs": 1, "device": "cpu"}).fit(XY(X[:150], Y[:150]),
                                                                               XY(X[150:], Y[150:]))
    info = export.export_onnx(m, tmp_path / "g.onnx")
    assert info["check"]["max_abs_diff"] <= 1e-4 * info["check"]["max_abs"]


def test_onnx_export_bytes_depend_on_the_model_only(tmp_path):
    """The export carries no stack traces (this checkout's paths and line numbers) or other
    exporter metadata, so the same fitted model exports to the same bytes from any checkout."""
    from pathlib import Path

    import numpy as np

    from alphafactory.models.base import XY

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((200, 8, 4)).astype(np.float32), rng.standard_normal((200, 2)).astype(np.float32)
    m = models.create("lstm", {"hidden": 8}, horizons=(1, 5), seed=0, lookback=8,
                      trainer={"epochs": 1, "device": "cpu"}).fit(XY(X[:150], Y[:150]), XY(X[150:], Y[150:]))
    export.export_onnx(m, tmp_path / "a.onnx")
    export.export_onnx(m, tmp_path / "b.onnx")
    raw = (tmp_path / "a.onnx").read_bytes()
    assert raw == (tmp_path / "b.onnx").read_bytes()
    root = str(Path(__file__).resolve().parents[1]).encode()
    assert root not in raw and b"stack_trace" not in raw and b"pkg.torch" not in raw


def test_timesnet_periods_are_the_largest_amplitudes_of_the_train_spectrum():
    """A window of 32 bars with a period-8 wave (frequency 4) and a weaker period-4 one."""
    import numpy as np

    t = np.arange(32)
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, (50, 1, 1))
    x = (np.sin(2 * np.pi * t / 8)[None, :, None] * 2 + np.sin(2 * np.pi * t[None, :, None] / 4 + phase)
         + rng.normal(0, 0.1, (50, 32, 3)))
    freqs, periods = top_periods(x, 2)
    assert (freqs, periods) == ([4, 8], [8, 4])
    freqs, periods = top_periods(x[:, :4], 5)  # at most L // 2 frequencies
    assert sorted(freqs) == [1, 2] and periods == [4 // f for f in freqs]


def test_timesnet_weights_are_each_windows_own_amplitudes():
    """The block's DFT at its frequencies equals numpy's FFT there, window by window."""
    import numpy as np

    block = TimesBlock(16, [2, 5], [8, 3], TimesNetParams(d_model=4))
    x = torch.randn(3, 16, 4)
    re = torch.einsum("bld,lk->bkd", x, block.cos)
    im = torch.einsum("bld,lk->bkd", x, block.sin)
    ref = np.abs(np.fft.rfft(x.numpy().astype(np.float64), axis=1))[:, [2, 5]]  # (B, k, d)
    np.testing.assert_allclose(torch.sqrt(re * re + im * im).numpy(), ref, rtol=1e-4, atol=1e-4)
    assert block(x).shape == (3, 16, 4)


def test_inceptiontime_has_a_shortcut_every_three_modules_and_sees_the_whole_window():
    torch.manual_seed(0)
    for depth, shortcuts in ((3, 1), (4, 1), (6, 2), (2, 0)):
        net = InceptionTimeNet(5, 2, InceptionTimeParams(depth=depth, kernel_sizes=(3, 5)))
        assert len(net.inception) == depth and len(net.shortcuts) == shortcuts
    net = InceptionTimeNet(5, 2, InceptionTimeParams(filters=4, bottleneck=4)).eval()
    x = torch.randn(2, 32, 5)
    x2 = x.clone()
    x2[:, 0] += 1.0  # the first bar of the window reaches the forecast (kernels up to 39 bars)
    with torch.no_grad():
        assert net(x).shape == (2, 2) and (net(x2) - net(x)).abs().min() > 0


@pytest.mark.parametrize("head, df", [("gaussian", None), ("student_t", 4.0)])
def test_deepar_loss_is_the_negative_log_likelihood_of_its_head(head, df):
    torch.manual_seed(0)
    out, y = torch.randn(6, 4), torch.randn(6, 2)
    y[0, 1] = float("nan")  # unlabelled: contributes nothing
    mu, scale = dist.split(out)
    law = torch.distributions.Normal(mu, scale) if df is None else torch.distributions.StudentT(df, mu, scale)
    ok = ~torch.isnan(y)
    ref = -law.log_prob(torch.nan_to_num(y))[ok].mean()
    torch.testing.assert_close(dist.nll_loss(head, df)(out, y), ref, rtol=1e-5, atol=1e-6)
    mean, std = dist.mean_std(out, df)
    torch.testing.assert_close(std, scale if df is None else scale * (df / (df - 2)) ** 0.5)
    torch.testing.assert_close(std, law.stddev)


def test_deepar_decoder_steps_through_the_horizons_in_order():
    """Step k is fed step k-1's mean: the horizon-1 output does not depend on later steps'
    weights, and one network emits (B, 2H) means then raw scales."""
    torch.manual_seed(0)
    net = DeepARNet(3, 3, DeepARParams(hidden=8)).eval()
    x = torch.randn(4, 6, 3)
    with torch.no_grad():
        a = net(x)
        net.proj.bias[0] += 1.0  # shifts the mean of every step; later steps also through their input
        b = net(x)
    assert a.shape == (4, 6)
    torch.testing.assert_close(b[:, 0] - a[:, 0], torch.ones(4), rtol=0, atol=1e-5)  # step 1: the bias only
    assert ((b[:, 1:3] - a[:, 1:3]) - 1.0).abs().max() > 1e-3  # later steps: also their fed-back input


def test_deepar_std_is_its_own_and_tracks_the_noise():
    """Targets whose noise scale grows with |feature 1|: DeepAR's std follows it (a volatility
    scale cannot see a feature), and its mean follows feature 0."""
    import numpy as np

    from alphafactory.models.base import XY

    rng = np.random.default_rng(0)
    n, L = 3000, 4
    X = rng.normal(size=(n, L, 3)).astype(np.float32)
    noise = 0.2 + np.abs(X[:, -1, 1])
    Y = np.stack([0.5 * X[:, -1, 0] + noise * rng.normal(size=n) for _ in range(2)], 1).astype(np.float32)
    m = models.create("deepar", {"hidden": 16, "dropout": 0.0}, horizons=(1, 5), seed=0, lookback=L,
                      trainer={"epochs": 20, "batch_size": 128, "lr": 3e-3, "device": "cpu"})
    m.fit(XY(X[:2000], Y[:2000]), XY(X[2000:2500], Y[2000:2500]))
    mean, std = m.predict_dist(X[2500:])
    np.testing.assert_array_equal(mean, m.predict(X[2500:]))
    for j in range(2):
        assert np.corrcoef(std[:, j], noise[2500:])[0, 1] > 0.7
        assert np.corrcoef(mean[:, j], X[2500:, -1, 0])[0, 1] > 0.7
    lstm = models.create("lstm", {"hidden": 4}, horizons=(1, 5), lookback=L, trainer={"epochs": 1, "device": "cpu"})
    lstm.fit(XY(X[:200], Y[:200]), XY(X[200:300], Y[200:300]))
    assert lstm.distribution is None
    with pytest.raises(ValueError, match="'lstm' forecasts no distribution"):
        lstm.predict_dist(X[:5])

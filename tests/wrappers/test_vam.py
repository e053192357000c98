"""VAM: identity at uniform attention, exact fold to the plain architecture, entropy and annealing."""

import math

import pytest
import torch

from kdbench.models import build_model
from kdbench.wrappers import virtual_attention as vam
from kdbench.wrappers.vam import VAMConfig


def _wrapped(name="resnet8", config: VAMConfig | None = None):
    config = config or VAMConfig()
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_chans=1)
    names = vam.wrap(model, config)
    return model, names


def test_uniform_attention_is_the_plain_conv():
    torch.manual_seed(0)
    plain = build_model("resnet8", num_classes=10, in_chans=1).eval()
    torch.manual_seed(0)
    wrapped = build_model("resnet8", num_classes=10, in_chans=1)
    vam.wrap(wrapped, VAMConfig())
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(plain(x), wrapped.eval()(x), atol=1e-6)


def test_wraps_only_the_last_stage_convs():
    model, names = _wrapped()
    assert names and all(name.startswith("layer3.") for name in names)
    model2, names2 = _wrapped(config=VAMConfig(last_stages=2))
    assert any(n.startswith("layer2.") for n in names2) and set(names) < set(names2)


def test_effective_weight_follows_the_formula():
    config = VAMConfig(groups=2)
    model, names = _wrapped(config=config)
    conv = model.get_submodule(names[0])
    attention = vam.attention_modules(model)[names[0]]
    with torch.no_grad():
        attention.attention_logits.copy_(torch.tensor([[2.0, 0.0], [0.0, -1.0]]))
    raw = conv.parametrizations.weight.original
    a = torch.softmax(torch.tensor([[2.0, 0.0], [0.0, -1.0]]), dim=1)
    out_half, in_half = raw.shape[0] // 2, raw.shape[1] // 2
    for i in range(2):
        for j in range(2):
            block = raw[i * out_half : (i + 1) * out_half, j * in_half : (j + 1) * in_half]
            expected = 2 * a[i, j] * block
            got = conv.weight[i * out_half : (i + 1) * out_half, j * in_half : (j + 1) * in_half]
            assert torch.allclose(got, expected, atol=1e-6)


def test_fold_is_exact_and_has_plain_keys():
    model, names = _wrapped()
    with torch.no_grad():
        for attention in vam.attention_modules(model).values():
            attention.attention_logits.normal_(0, 2)
    # train a little so BN stats and weights are not at init
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 1, 28, 28)
    for _ in range(3):
        loss = model(x).logsumexp(1).mean() + vam.entropy_loss(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    plain = build_model("resnet8", num_classes=10, in_chans=1)
    folded = vam.fold(model, plain).eval()
    assert set(folded.state_dict()) == set(build_model("resnet8", 10, 1).state_dict())
    assert not any(isinstance(m, vam.VirtualAttention) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_entropy_is_log_g_at_uniform_and_lower_when_peaked():
    config = VAMConfig(groups=4, entropy_weight=0.5)
    model, names = _wrapped(config=config)
    assert vam.entropy_loss(model).item() == pytest.approx(0.5 * math.log(4), rel=1e-6)
    for value in vam.entropies(model).values():
        assert value == pytest.approx(math.log(4), rel=1e-6)
    with torch.no_grad():
        for attention in vam.attention_modules(model).values():
            attention.attention_logits[:, 0] = 10.0
    assert all(v < 0.01 for v in vam.entropies(model).values())


def test_temperature_anneals_as_t0_over_epoch():
    model, names = _wrapped(config=VAMConfig(t0=1.0, t_min=0.1))
    attention = next(iter(vam.attention_modules(model).values()))
    for epoch, expected in [(1, 1.0), (2, 0.5), (5, 0.2), (50, 0.1)]:
        attention.set_epoch(epoch, 100)
        assert attention.temperature.item() == pytest.approx(expected)


def test_no_wrappable_conv_is_a_clear_error():
    model = build_model("resnet8", num_classes=10, in_chans=1)
    with pytest.raises(ValueError, match="VAM found no convolution"):
        vam.wrap(model, VAMConfig(groups=7))

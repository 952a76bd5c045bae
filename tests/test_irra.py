import torch

from tbps.methods import METHODS, build_method
from tbps.models import build_backbone


class FakeTokenizer:
    vocab_size, pad_id, mask_id, bos_id, eos_id = 60, 0, 4, 2, 3
    special_ids = {0, 1, 2, 3, 4}


def _batch(B=8, L=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = torch.ones(B, L, dtype=torch.bool)
    return {"images": torch.randn(B, 3, 128, 64, generator=g),
            "tokens": {"ids": ids, "attention_mask": mask, "eot_index": torch.full((B,), L - 1)},
            "pids": torch.arange(B) % 4, "mask_generator": torch.Generator().manual_seed(seed)}


def _irra(**cfg):
    torch.manual_seed(0)
    return build_method("irra", cfg, build_backbone("tiny-clip", vocab_size=60), num_classes=4,
                        tokenizer=FakeTokenizer())


def test_irra_registered_and_returns_all_losses():
    assert "irra" in METHODS
    out = _irra()(_batch())
    assert set(out) == {"sdm", "id", "mlm", "loss"}
    assert torch.isclose(out["loss"], out["sdm"] + out["id"] + out["mlm"])


def test_irra_gradients_reach_every_module_and_weights_switch_losses_off():
    m = _irra()
    m(_batch())["loss"].backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad
    out = _irra(loss_weights={"mlm": 0.0, "id": 0.0})(_batch())
    assert set(out) == {"sdm", "loss"}


def test_irra_overfits_a_fixed_batch():
    m = _irra()
    batch = _batch()
    opt = torch.optim.Adam(m.parameters(), lr=3e-4)
    first = None
    for _ in range(40):
        batch["mask_generator"] = torch.Generator().manual_seed(0)  # same masked positions each step
        loss = m(batch)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.6 * first


def test_new_parameters_are_the_heads():
    new = _irra().new_parameter_names()
    assert any(n.startswith("cross_modal.") for n in new) and any(n.startswith("classifier.") for n in new)
    assert not any(n.startswith("backbone.") for n in new)


def test_learnable_temperature_starts_at_tau_init_and_never_drops_below_tau():
    m = _irra(learnable_tau=True, tau_init=0.2)
    assert abs(float(m.temperature()) - 0.2) < 1e-6
    m(_batch())["loss"].backward()
    assert m.log_inv_tau.grad is not None and m.log_inv_tau.grad.abs() > 0
    with torch.no_grad():
        m.log_inv_tau.fill_(10.0)  # a scale far beyond 1 / tau
    assert abs(float(m.temperature()) - 0.02) < 1e-6
    assert _irra().temperature() == 0.02 and not hasattr(_irra(), "log_inv_tau")

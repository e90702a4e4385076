"""Fused Triton RMSNorm (open_rlhf/kernels/rms_norm.py) against the pure-torch reference and transformers.

The kernels run on CPU through Triton's interpreter: the autouse fixture sets ``TRITON_INTERPRET=1`` per test,
and `open_rlhf.kernels.rms_norm` decorates its kernels on first launch, after the variable is read (it also
works when Triton was imported earlier without it, as transformers does; see the note above its kernels).
`test_kernels_compile_for_h100_without_a_gpu` runs Triton's real compiler down to an sm_90 cubin on CPU.

Tolerances, per dtype: |diff| <= atol * max(1, max|expected|) + rtol * |expected|, elementwise.
- fp32: 1e-5 on the output, 1e-4 on dX and dW (only the summation order differs).
- bf16: the output is the same rounding as LlamaRMSNorm (rstd in fp32, x_hat rounded to bf16, one rounding of
  the product), so 1 bf16 ulp (rtol 2**-7) covers it. dX and dW accumulate in fp32 where eager rounds each
  dy * w and dy * x_hat to bf16 first; dW sums N such products, so eager's error grows with the largest entry
  rather than with each entry: atol 1e-2 of max|expected|, rtol 2e-2. That the kernel is the more accurate of
  the two is compared against an fp64 reference in `test_bf16_as_accurate_as_eager`.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from open_rlhf.kernels import (
    FusedRMSNorm,
    RMSNormFunction,
    fused_rms_norm,
    patch_rms_norm,
    rms_norm_reference,
)

triton = pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
TOLERANCES = {
    torch.float32: {"y": (1e-5, 1e-5), "grad": (1e-4, 1e-4)},
    torch.bfloat16: {"y": (2**-7, 1e-2), "grad": (2e-2, 1e-2)},
}
DTYPES = [torch.float32, torch.bfloat16]
# The odd shape from the issue, H not a power of two (below and above a 128-wide tile), one row, a plain one.
SHAPES = [(5, 123, 123), (3, 7, 200), (1, 48), (16, 256)]


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(shape, dtype, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (2.0 * torch.randn(shape, generator=g)).to(dtype)
    # Weights away from their init so that a missing or doubled weight/offset cannot pass.
    w = ((1.0 - offset) + 0.3 * torch.randn(shape[-1], generator=g)).to(dtype)
    dy = torch.randn(shape, generator=g).to(dtype)
    return x, w, dy


def _forward_backward(fn, x, w, dy):
    """Returns (y, dx, dw) of ``fn(x, w)`` for the upstream gradient ``dy``."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y = fn(x, w)
    y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, w.grad


def _assert_close(actual, expected, dtype, kind):
    rtol, atol = TOLERANCES[dtype][kind]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = max(1.0, expected.float().abs().max().item())
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("offset,casting_mode", [(0.0, "llama"), (1.0, "gemma")])
def test_kernel_matches_reference(shape, dtype, offset, casting_mode):
    x, w, dy = _inputs(shape, dtype, offset)
    ours = _forward_backward(lambda x, w: RMSNormFunction.apply(x, w, 1e-6, offset, casting_mode), x, w, dy)
    ref = _forward_backward(lambda x, w: rms_norm_reference(x, w, 1e-6, offset, casting_mode), x, w, dy)
    for name, a, b in zip(("y", "dx", "dw"), ours, ref, strict=True):
        assert torch.isfinite(a.float()).all(), name
        _assert_close(a, b, dtype, "y" if name == "y" else "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])
def test_module_matches_transformers(arch, dtype):
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    hidden, offset = 123, 1.0 if arch == "gemma" else 0.0
    hf = {"llama": LlamaRMSNorm, "qwen2": Qwen2RMSNorm, "gemma": GemmaRMSNorm}[arch](hidden, eps=1e-5).to(dtype)
    ours = FusedRMSNorm(hidden, eps=1e-5, offset=offset).to(dtype)
    x, w, dy = _inputs((5, 123, hidden), dtype, offset)
    with torch.no_grad():
        hf.weight.copy_(w)
        ours.weight.copy_(w)

    def via(module):
        return lambda x, w: module(x)

    ref = _forward_backward(via(hf), x, w, dy)
    got = _forward_backward(via(ours), x, w, dy)
    ref_dw, got_dw = hf.weight.grad, ours.weight.grad
    _assert_close(got[0], ref[0], dtype, "y")
    _assert_close(got[1], ref[1], dtype, "grad")
    _assert_close(got_dw, ref_dw, dtype, "grad")


def test_bf16_input_with_fp32_weight_promotes_like_llama():
    """LlamaRMSNorm returns ``weight * x_hat.to(bf16)``: an fp32 weight makes the output fp32."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, w, dy = _inputs((4, 40), torch.bfloat16)
    hf, ours = LlamaRMSNorm(40), FusedRMSNorm(40)
    with torch.no_grad():
        hf.weight.copy_(w.float())
        ours.weight.copy_(w.float())
    y_ref, dx_ref, _ = _forward_backward(lambda x, w: hf(x), x, w, dy)
    y, dx, _ = _forward_backward(lambda x, w: ours(x), x, w, dy)
    assert y.dtype == y_ref.dtype == torch.float32 and dx.dtype == torch.bfloat16
    _assert_close(y, y_ref, torch.float32, "y")
    _assert_close(dx, dx_ref, torch.bfloat16, "grad")
    _assert_close(ours.weight.grad, hf.weight.grad, torch.float32, "grad")


@pytest.mark.parametrize("casting_mode", ["llama", "gemma"])
def test_bf16_as_accurate_as_eager(casting_mode):
    """Against an fp64 reference, the kernel's bf16 output has eager's error (same rounding steps) and its dX and
    dW errors are within 2x of eager's: both are a few ulps, from rounding at different points (eager rounds
    dy * w and dy * x_hat to bf16, the kernel reduces in fp32). A wrong formula is off by far more."""
    offset = 0.0 if casting_mode == "llama" else 1.0
    x, w, dy = _inputs((5, 123, 123), torch.float32, offset, seed=1)
    gold = _forward_backward(lambda x, w: rms_norm_reference(x, w, 1e-6, offset, casting_mode), x.double(),
                             w.double(), dy.double())
    bf16 = (x.bfloat16(), w.bfloat16(), dy.bfloat16())
    ours = _forward_backward(lambda x, w: fused_rms_norm(x, w, 1e-6, offset, casting_mode), *bf16)
    eager = _forward_backward(lambda x, w: rms_norm_reference(x, w, 1e-6, offset, casting_mode), *bf16)
    for name, o, e, g, slack in zip(("y", "dx", "dw"), ours, eager, gold, (1.0, 2.0, 2.0), strict=True):
        err_ours = (o.double() - g).abs().max().item()
        err_eager = (e.double() - g).abs().max().item()
        assert err_ours <= slack * err_eager + 1e-6, (name, err_ours, err_eager)


def test_non_contiguous_input_and_expanded_gradient():
    """A transposed (B, T, H) view (copied), rows with a padded stride (used as they are), a last-dim-strided
    slice (copied), and ``y.sum()``, whose upstream gradient is an expanded stride-0 tensor."""
    w = 1.0 + 0.3 * torch.randn(96)
    padded_rows = torch.randn(21, 192)[:, :96]
    for x in (torch.randn(7, 3, 96).transpose(0, 1), padded_rows, torch.randn(21, 192)[:, ::2]):
        assert not x.is_contiguous()
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ws = [w.clone().requires_grad_(True) for _ in range(2)]
        y = fused_rms_norm(xs[0], ws[0])
        y_ref = rms_norm_reference(xs[1], ws[1])
        y.sum().backward()
        y_ref.sum().backward()
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ws[0].grad, ws[1].grad, rtol=1e-4, atol=1e-4)


def test_frozen_weight_gets_no_gradient():
    x, w, dy = _inputs((6, 64), torch.float32)
    x.requires_grad_(True)
    fused_rms_norm(x, w).backward(dy)  # w does not require grad: the kernel skips the dW reduction
    x_ref = x.detach().clone().requires_grad_(True)
    rms_norm_reference(x_ref, w).backward(dy)
    assert w.grad is None
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="does not match the last dimension"):
        fused_rms_norm(torch.randn(2, 8), torch.ones(9))
    with pytest.raises(ValueError, match="casting_mode"):
        FusedRMSNorm(8, casting_mode="fp32")
    with pytest.raises(ValueError, match="MAX_FUSED_SIZE"):
        fused_rms_norm(torch.randn(1, 65537), torch.ones(65537))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(sys.modules["open_rlhf.kernels.rms_norm"], "_fallback_warned", False)
    norm = FusedRMSNorm(32)
    x = torch.randn(3, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1, y2 = norm(x), norm(x)
    messages = [str(w.message) for w in caught if "fused RMSNorm" in str(w.message)]
    assert len(messages) == 1 and "no CUDA GPU" in messages[0]
    torch.testing.assert_close(y1, rms_norm_reference(x, norm.weight, 1e-6))
    torch.testing.assert_close(y2, y1)


def test_import_does_not_import_triton():
    code = "import sys, open_rlhf.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def test_patch_rms_norm_replaces_every_norm_in_place():
    model = _tiny_llama()
    before = {n: m.weight for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    ids = torch.randint(0, 128, (2, 11))
    with torch.no_grad():
        logits_ref = model(ids).logits
    assert patch_rms_norm(model) == len(before) == 5  # 2 layers x (input, post-attention) + final norm
    for name, weight in before.items():
        module = model.get_submodule(name)
        assert isinstance(module, FusedRMSNorm) and module.weight is weight and module.variance_epsilon == 1e-5
    assert patch_rms_norm(model) == 0  # idempotent
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits_ref, rtol=1e-4, atol=1e-4)


def test_patch_rms_norm_gemma_needs_offset():
    from transformers import GemmaConfig, GemmaForCausalLM

    config = GemmaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = GemmaForCausalLM(config).float()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "GemmaRMSNorm":
                m.weight.normal_(0.0, 0.3)
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        logits_ref = model(ids).logits
    with pytest.raises(ValueError, match="offset=1.0"):
        patch_rms_norm(model)
    assert not any(isinstance(m, FusedRMSNorm) for m in model.modules())  # a refusal leaves the model as it was
    assert patch_rms_norm(model, offset=1.0) == 5
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits_ref, rtol=1e-4, atol=1e-4)


def _train_losses(patch: bool, steps: int = 5) -> list[float]:
    model = _tiny_llama(seed=0)
    if patch:
        assert patch_rms_norm(model) == 5
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # One fixed batch: the model memorises it, so the loss must fall.
    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_training_equivalence_tiny_llama():
    """5 AdamW steps of a tiny fp32 Llama with and without the patch give the same losses."""
    plain, patched = _train_losses(patch=False), _train_losses(patch=True)
    assert plain[-1] < plain[0]  # the run actually trains, so the comparison is not vacuous
    torch.testing.assert_close(torch.tensor(patched), torch.tensor(plain), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path of the benchmark")
def test_benchmark_exits_cleanly_without_gpu():
    result = subprocess.run(
        [sys.executable, str(REPO / "kernels" / "bench_rms_norm.py")], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "needs a CUDA GPU" in result.stdout


@pytest.mark.parametrize("hidden", [4096, 16384])
def test_kernels_compile_for_h100_without_a_gpu(monkeypatch, hidden):
    """The interpreter never runs Triton's compiler. Lower both kernels (bf16, llama mode, the launcher's
    settings) to an sm_90 cubin on CPU, so that an error only the compiler sees fails here, not on a GPU."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    monkeypatch.delenv("TRITON_INTERPRET")
    module = sys.modules["open_rlhf.kernels.rms_norm"]
    types = {"X": "*bf16", "Y": "*bf16", "W": "*bf16", "DX": "*bf16", "DY": "*bf16", "RSTD": "*fp32",
             "DW_PARTIAL": "*fp32", "eps": "fp32", "offset": "fp32"}  # any other argument is an int32
    for kernel, backward in zip(module._kernels(False), (False, True), strict=True):
        block_size, block_rows, num_warps = module._launch_settings(2048, hidden, backward=backward)
        constexprs = {"CASTING_MODE": 0, "RTNE_BF16": False, "BLOCK_SIZE": block_size, "BLOCK_ROWS": block_rows}
        if backward:
            constexprs["COMPUTE_DW"] = True
        signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in kernel.arg_names}
        source = ASTSource(kernel, signature=signature, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
        assert compiled.asm["cubin"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("hidden", [4096, 5000])
def test_compiled_kernel_on_gpu(monkeypatch, hidden):
    monkeypatch.delenv("TRITON_INTERPRET")
    x, w, dy = (t.cuda() for t in _inputs((2048, hidden), torch.bfloat16))
    ours = _forward_backward(lambda x, w: fused_rms_norm(x, w), x, w, dy)
    ref = _forward_backward(lambda x, w: rms_norm_reference(x, w), x, w, dy)
    for name, a, b in zip(("y", "dx", "dw"), ours, ref, strict=True):
        _assert_close(a, b, torch.bfloat16, "y" if name == "y" else "grad")

"""Causal attention forward at the varlen buckets' shapes, bf16, 2 threads: flash (repeat_kv +
_scaled_dot_product_flash_attention_for_cpu, as _FlashMatmulBackward.forward) vs compiled matmuls
(stacked query heads per kv head, fp32 softmax, lse)."""
import time, torch
torch.set_num_threads(2)
dt = torch.bfloat16

def flash(q, k, v, scale):
    r = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, kr, vr, 0.0, True, scale=scale)
    return o, lse

def mm_fwd(q, k, v, scale: float):
    B, H, L, D = q.shape
    hk = k.shape[1]; r = H // hk
    qg = q.reshape(B, hk, r * L, D)
    s = torch.matmul(qg, k.transpose(-1, -2)).float() * scale          # [B, hk, rL, L]
    i = torch.arange(L, device=q.device)
    seen = (i[:, None] >= i[None, :]).repeat(r, 1)
    s = torch.where(seen, s, float("-inf"))
    lse = torch.logsumexp(s, -1, keepdim=True)
    p = torch.exp(s - lse).to(q.dtype)
    o = torch.matmul(p, v).reshape(B, H, L, D)
    return o, lse.reshape(B, H, L)

cmm = torch.compile(mm_fwd, dynamic=True)

def t(f, n=20):
    f(); f()
    s = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - s) / n * 1e3

for width, n in ((64, 12), (128, 8), (192, 5), (256, 4), (320, 3), (448, 2), (512, 2)):
    qp = torch.randn(n * width, 9, 64).to(dt); kp = torch.randn(n * width, 3, 64).to(dt); vp = torch.randn(n * width, 3, 64).to(dt)
    q, k, v = (x.view(n, width, *x.shape[1:]).transpose(1, 2) for x in (qp, kp, vp))
    sc = 0.125
    o1, l1 = flash(q, k, v, sc); o2, l2 = cmm(q, k, v, sc)
    err = (o1.float() - o2.float()).abs().max().item(); lerr = (l1 - l2).abs().max().item()
    a = t(lambda: flash(q, k, v, sc)); b = t(lambda: cmm(q, k, v, sc))
    print(f"{n} x {width}: flash {a:.2f} ms, compiled matmuls {b:.2f} ms, {a/b:.2f}x; max |o diff| {err:.3g}, |lse diff| {lerr:.3g}")

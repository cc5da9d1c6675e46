import time, torch
torch.set_num_threads(2)
def t(f):
    f(); s = time.perf_counter(); c = time.process_time(); k = 0
    while time.perf_counter() - s < 0.4: f(); k += 1
    dt = time.perf_counter() - s
    return dt / k * 1e3, (time.process_time() - c) / dt
for M in (1000, 1200):
    for (K, N) in ((576, 576), (1536, 576)):
        x = torch.randn(M, K).bfloat16(); W = torch.randn(N, K).bfloat16()
        a = t(lambda: torch.nn.functional.linear(x, W))
        b = t(lambda: (W @ x.T).T)
        torch.backends.mkldnn.enabled = False
        c = t(lambda: torch.nn.functional.linear(x, W))
        torch.backends.mkldnn.enabled = True
        h = M // 2
        d = t(lambda: torch.cat([torch.nn.functional.linear(x[:h], W), torch.nn.functional.linear(x[h:], W)]))
        print(f"M {M} K {K} N {N}: linear {a[0]:.3f} ms ({a[1]:.2f}), transposed {b[0]:.3f} ({b[1]:.2f}), no-mkldnn {c[0]:.3f} ({c[1]:.2f})")

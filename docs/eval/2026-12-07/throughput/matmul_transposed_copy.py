import time, torch
torch.set_num_threads(2)
def t(f):
    f(); s = time.perf_counter(); k = 0
    while time.perf_counter() - s < 0.3: f(); k += 1
    return (time.perf_counter() - s) / k * 1e3
for M in (700, 1000, 1300, 2200, 3300):
    row = []
    for (K, N) in ((576, 576), (1536, 576), (576, 1536), (576, 192)):
        x = torch.randn(M, K).bfloat16(); W = torch.randn(N, K).bfloat16()
        a = t(lambda: torch.nn.functional.linear(x, W))
        b = t(lambda: (W @ x.T).T.contiguous())
        row.append(f"{K}->{N}: {a:.2f}/{b:.2f}")
    print(f"M {M}: " + "  ".join(row))

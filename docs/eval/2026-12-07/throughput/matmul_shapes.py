import time, torch
torch.set_num_threads(2)
for M in (1100, 2200, 4400, 8800):
    for (K, N) in ((576, 576), (576, 1536), (1536, 576), (576, 192)):
        a = torch.randn(M, K).bfloat16(); w = torch.randn(N, K).bfloat16()
        torch.nn.functional.linear(a, w)
        t = time.perf_counter(); c = time.process_time(); k = 0
        while time.perf_counter() - t < 0.5:
            torch.nn.functional.linear(a, w); k += 1
        dt = time.perf_counter() - t
        print(f"M {M} K {K} N {N}: {2*M*K*N*k/dt/1e9:.0f} GFLOP/s cpu/wall {(time.process_time()-c)/dt:.2f}")

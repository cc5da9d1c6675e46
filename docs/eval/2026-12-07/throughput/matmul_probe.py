# The probe behind the first table of "The AMX machine's real peak" (docs/TRAINING.md): one n^3 bf16 matmul
# for 8 s on T threads. Usage: python matmul_probe.py T N; two at once: (python matmul_probe.py 1 1024 & python matmul_probe.py 1 1024; wait)
import sys, time, torch
t = int(sys.argv[1]); n = int(sys.argv[2]); torch.set_num_threads(t)
a, b = torch.randn(n, n).bfloat16(), torch.randn(n, n).bfloat16()
a @ b
reps = max(4, int(6e10 / (2 * n**3)))
w, c = time.perf_counter(), time.process_time()
end = w + 8
k = 0
while time.perf_counter() < end:
    a @ b; k += 1
w = time.perf_counter() - w; c = time.process_time() - c
print(f"threads {t} n {n}: {2*n**3*k/w/1e9:.0f} GFLOP/s wall, cpu/wall {c/w:.2f}", flush=True)

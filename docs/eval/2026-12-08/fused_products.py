"""Fused base products against separate ones, bf16, 2 threads, at the profiled scp step's row counts
(3,380 compressor and 2,002 generator tokens): gate+up as one [576 -> 3,072] product, q+k+v as one
[576 -> 960], forward and the input gradient. python docs/eval/2026-12-08/fused_products.py"""
import time, torch
torch.set_num_threads(2)
dt=torch.bfloat16
def t(f,n=20):
    for _ in range(3): f()
    s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n*1e3
for T in (3380,2002):
    x=torch.randn(T,576,dtype=dt); wg=torch.randn(1536,576,dtype=dt); wu=torch.randn(1536,576,dtype=dt); wgu=torch.cat([wg,wu])
    dg=torch.randn(T,1536,dtype=dt); du=torch.randn(T,1536,dtype=dt); dgu=torch.cat([dg,du],1)
    wq=torch.randn(576,576,dtype=dt); wk=torch.randn(192,576,dtype=dt); wv=torch.randn(192,576,dtype=dt); wqkv=torch.cat([wq,wk,wv])
    dq=torch.randn(T,576,dtype=dt); dk=torch.randn(T,192,dtype=dt); dv=torch.randn(T,192,dtype=dt); dqkv=torch.cat([dq,dk,dv],1)
    a=t(lambda:(x@wg.T, x@wu.T)); b=t(lambda:x@wgu.T)
    c=t(lambda: dg@wg + du@wu); d=t(lambda: dgu@wgu)
    e=t(lambda:(x@wq.T,x@wk.T,x@wv.T)); f=t(lambda:x@wqkv.T)
    g=t(lambda: dq@wq + dk@wk + dv@wv); h=t(lambda: dqkv@wqkv)
    print(f"T={T}: gate/up fwd {a:.2f} vs fused {b:.2f} ms; bwd dx {c:.2f} vs {d:.2f}; qkv fwd {e:.2f} vs {f:.2f}; bwd dx {g:.2f} vs {h:.2f}; saved per layer {(a-b)+(c-d)+(e-f)+(g-h):.2f} ms")

import time, torch
torch.set_num_threads(2)
M = 2200
def t(f):
    f(); s = time.perf_counter(); k = 0
    while time.perf_counter() - s < 0.5: f(); k += 1
    return (time.perf_counter() - s) / k * 1e3
x = torch.randn(M, 576).bfloat16(); W = torch.randn(576, 576).bfloat16()
A = torch.randn(16, 576).bfloat16(); B = torch.randn(576, 16).bfloat16()
h = torch.randn(M, 16).bfloat16(); dY = torch.randn(M, 576).bfloat16()
print("base fwd  x@W^T     %.3f ms" % t(lambda: x @ W.T))
print("base dX   dY@W      %.3f ms" % t(lambda: dY @ W))
print("lora A    x@A^T     %.3f ms" % t(lambda: x @ A.T))
print("lora B    h@B^T     %.3f ms" % t(lambda: h @ B.T))
print("dB  dY^T@h          %.3f ms" % t(lambda: dY.T @ h))
print("dh  dY@B            %.3f ms" % t(lambda: dY @ B))
print("dA  dh^T@x          %.3f ms" % t(lambda: h.T @ x))
print("dx  dh@A            %.3f ms" % t(lambda: h @ A))
print("scale-add  y + s*z  %.3f ms" % t(lambda: dY + 2.0 * dY))

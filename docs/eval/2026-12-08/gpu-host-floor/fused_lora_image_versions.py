"""The fused LoRA path (clara_cli/train/merged_lora.py, merge=False) against peft's under the device image's
peft 0.21.2 / transformers 5.17 / torch 2.11, fp32 on a CPU: PYTHONPATH=<repo> <image venv>/bin/python this.py"""
import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from clara_cli.train.merged_lora import MergedLora, mergeable

print("peft", peft.__version__, "transformers", transformers.__version__, "torch", torch.__version__)
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(16, 24, bias=False)

    def forward(self, x):
        return self.q(x)

res = {}
for mode in ("peft", "fused"):
    torch.manual_seed(0)
    m = get_peft_model(M(), LoraConfig(r=4, lora_alpha=8, target_modules=["q"], lora_dropout=0.0))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    layers = [x for x in m.modules() if isinstance(x, LoraLayer)]
    assert all(mergeable(layer) for layer in layers)
    ml = MergedLora(layers, merge=False) if mode == "fused" else None
    x = torch.randn(2, 5, 16, requires_grad=True)
    ctx = ml.use("default") if ml else torch.enable_grad()
    with ctx:
        y = m(x)
    (y.square().sum()).backward()
    a = [p for n, p in m.named_parameters() if "lora_A" in n][0]
    b = [p for n, p in m.named_parameters() if "lora_B" in n][0]
    res[mode] = (y.detach(), x.grad, a.grad, b.grad, y.grad_fn.__class__.__name__)
for i, name in enumerate(["y", "dx", "dA", "dB"]):
    d = float((res["peft"][i] - res["fused"][i]).abs().max())
    print(name, "max diff", d)
    assert d < 1e-4, name
print("graph nodes:", res["peft"][4], res["fused"][4])

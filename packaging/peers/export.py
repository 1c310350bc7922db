"""Exports the peers benchmark's models once, with identical seed-0 weights for every system:
ResNet-50 (torchvision) and a BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072,
sequence 128), each as TorchScript (`.pt`, traced) and ONNX (`.onnx`, dynamic batch).

usage: python export.py OUT_DIR
"""
import math
import sys

import torch
import torchvision

out = sys.argv[1]
SEQ = 128


class Encoder(torch.nn.Module):
    """BERT-base shape, written out so that tracing and ONNX export see plain ops."""

    def __init__(self, vocab=30522, hidden=768, heads=12, ffn=3072, layers=12):
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.tok = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Parameter(torch.randn(SEQ, hidden) * 0.02)
        self.ln0 = torch.nn.LayerNorm(hidden)
        self.layers = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    "qkv": torch.nn.Linear(hidden, 3 * hidden),
                    "out": torch.nn.Linear(hidden, hidden),
                    "ln1": torch.nn.LayerNorm(hidden),
                    "ff1": torch.nn.Linear(hidden, ffn),
                    "ff2": torch.nn.Linear(ffn, hidden),
                    "ln2": torch.nn.LayerNorm(hidden),
                }
            )
            for _ in range(layers)
        )
        self.pool = torch.nn.Linear(hidden, hidden)

    def forward(self, ids):
        h, n, d = self.hidden, self.heads, self.hidden // self.heads
        x = self.ln0(self.tok(ids) + self.pos)
        for l in self.layers:
            q, k, v = l["qkv"](x).view(-1, SEQ, 3, n, d).permute(2, 0, 3, 1, 4).unbind(0)
            att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(-1, SEQ, h)
            x = l["ln1"](x + l["out"](ctx))
            x = l["ln2"](x + l["ff2"](torch.nn.functional.gelu(l["ff1"](x), approximate="tanh")))
        return torch.tanh(self.pool(x[:, 0]))


def export(name, model, example):
    model.eval()
    with torch.no_grad():
        torch.jit.trace(model, example).save(f"{out}/{name}.pt")
        torch.onnx.export(
            model,
            (example,),
            f"{out}/{name}.onnx",
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    print(f"exported {name}", flush=True)


torch.manual_seed(0)
export("resnet50", torchvision.models.resnet50(), torch.randn(2, 3, 224, 224))
torch.manual_seed(0)
export("bert_base", Encoder(), torch.randint(0, 30522, (2, SEQ)))

"""PyTorch CIFAR ResNet train-step benchmark: the reference point for resjax's speed on CPU.

    python benchmarks/torch_resnet.py --batch_size=128            # ResNet-20, channels_last
    python benchmarks/torch_resnet.py --depth=56 --nchw --json

Model: He et al. 2015 CIFAR ResNet (3x3 stem, 16 ch; 3 stages of 16/32/64 ch x n basic blocks;
option-A identity shortcuts: stride-2 subsample + zero-padded channels; BN; global average pool;
FC 10). Depth 6n+2; ResNet-20 has 269,722 parameters. One step = forward, cross-entropy, backward
and SGD (momentum 0.9, lr 0.1, wd 1e-4) on a fixed synthetic batch, BN in train mode. Reports the
median images/s over timed windows after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A identity shortcut (He et al. 2015, sec. 4.2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.stride = stride
        self.pad = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            # Option A: subsample spatially, zero-pad the new channels (no parameters).
            shortcut = x[:, :, :: self.stride, :: self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): input (N, 3, 32, 32), output (N, num_classes) logits."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}"
            )
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, in_ch = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for j in range(n):
                stride = 2 if (stage > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def make_train_step(depth: int = 20, batch_size: int = 128, channels_last: bool = True):
    """Returns (step, n_params): `step()` runs one SGD train step on a fixed synthetic batch."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = CifarResNet(depth).to(memory_format=fmt).train()
    n_params = sum(p.numel() for p in model.parameters())
    # He et al. 2015, sec. 4.2: SGD, momentum 0.9, lr 0.1, weight decay 1e-4.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,))

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, n_params


def time_window(step, steps: int, batch_size: int) -> float:
    """(images/s, cpu share) over `steps` calls of `step`; CPU eager is synchronous.

    cpu share = process CPU time / (wall time x cores): near 1 when no other process took cores.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    loss.item()
    wall = time.perf_counter() - t0
    return steps * batch_size / wall, (time.process_time() - c0) / wall / os.cpu_count()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
    p.add_argument("--warmup_steps", type=int, default=10)
    p.add_argument("--window_steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    step, n_params = make_train_step(args.depth, args.batch_size, channels_last=not args.nchw)
    for _ in range(args.warmup_steps):
        step()
    windows = [time_window(step, args.window_steps, args.batch_size) for _ in range(args.windows)]
    rates = [r for r, _ in windows]
    result = {
        "framework": "torch",
        "torch": torch.__version__,
        "depth": args.depth,
        "params": n_params,
        "batch_size": args.batch_size,
        "layout": "nchw" if args.nchw else "channels_last",
        "threads": torch.get_num_threads(),
        "img_per_s": round(statistics.median(rates), 1),
        "img_per_s_windows": [round(r, 1) for r in rates],
        "loss": round(float(step()), 4),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"torch {result['torch']} ResNet-{args.depth}: {n_params:,} params, "
            f"batch {args.batch_size}, {result['layout']}, {result['threads']} threads: "
            f"{result['img_per_s']} img/s (windows {result['img_per_s_windows']})"
        )


if __name__ == "__main__":
    main()

"""The per-head projection of the Mamba mixers, ``einsum("blkd,kcd->blkc")``, against other ways to write it.

x (B, L, K, d) times each head's weight (K, c, d): the three forms of ``ssmir.ops.head_scan.head_linear`` (the
einsum; one GEMM with a block-diagonal (K c, K d) weight, which ssmir uses when training on CUDA; "mixed", the
einsum forward with a backward of large GEMMs, used when training on CPU), a batched GEMM over contiguous heads,
and a loop of K linears; forward
and forward+backward (gradients of x and the weight), median of 6. Each variant is checked against the einsum.
Defaults: a training batch of the bundled denoiser at level 1 (B 16, L 128², K 8 heads, d 16, c = 1 + 2·16).

    python benchmarks/bench_head_projection.py [--device cuda] [--shape B L K d c]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", type=int, nargs=5, default=[16, 16384, 8, 16, 33], metavar=("B", "L", "K", "d", "c"))
    a = p.parse_args()
    import torch
    import torch.nn.functional as F

    from ssmir.ops.head_scan import head_linear

    torch.manual_seed(0)
    dev = a.device
    B, L, K, d, c = a.shape

    def sync():
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def f_einsum(u, W):
        return head_linear(u, W, "einsum")

    def f_bmm(u, W):  # (K, B L, d) @ (K, d, c)
        uk = u.reshape(B * L, K, d).transpose(0, 1)
        return torch.bmm(uk, W.transpose(1, 2)).transpose(0, 1).reshape(B, L, K, c)

    def f_blockdiag(u, W):
        return head_linear(u, W, "blockdiag")

    def f_mixed(u, W):
        return head_linear(u, W, "mixed")

    def f_loop(u, W):
        return torch.stack([F.linear(u[:, :, k], W[k]) for k in range(K)], dim=2)

    base = torch.randn(B, L, K * d, device=dev)
    W = torch.randn(K, c, d, device=dev, requires_grad=True)
    g = ref = None
    for name, f in [("einsum", f_einsum), ("bmm", f_bmm), ("blockdiag", f_blockdiag), ("mixed", f_mixed),
                    ("loop", f_loop)]:
        x = base.clone().requires_grad_(True)
        W.grad = None
        out = f(x.view(B, L, K, d), W)
        if g is None:
            g = torch.randn_like(out)
        out.backward(g)
        if ref is None:
            ref = (out.detach(), x.grad.clone(), W.grad.clone())
            check = ""
        else:
            got = (out, x.grad, W.grad)
            rel = [((v - r).abs().max() / r.abs().max()).item() for v, r in zip(got, ref, strict=True)]
            check = "  largest relative difference to einsum (y, dx, dW): " + ", ".join(f"{e:.1e}" for e in rel)
        for mode in ("fwd", "fwd+bwd"):
            ts = []
            for _ in range(6):
                x.grad = W.grad = None
                sync()
                t = time.perf_counter()
                if mode == "fwd":
                    with torch.no_grad():
                        f(x.view(B, L, K, d), W)
                else:
                    f(x.view(B, L, K, d), W).backward(g)
                sync()
                ts.append(time.perf_counter() - t)
            print(f"{dev} {name:10s} {mode:8s} {sorted(ts)[len(ts) // 2] * 1000:8.2f} ms", flush=True)
        if check:
            print(check, flush=True)


if __name__ == "__main__":
    main()

"""Deepen trained EAMamba weights into a larger UNet that computes the same output (``ssmir.models.grow``).

    python tools/grow_eamamba.py --weights ssmir/weights/eamamba-small-denoise-blind.safetensors \\
        --num-blocks 2 3 3 4 --refinement 4 --out runs/grown/init.safetensors

The output is a safetensors file with the grown architecture in its metadata: give it to ``ssmir train`` as
``init_weights`` (or ``--init``) with the grown ``num_blocks``/``num_refinement_blocks`` in the config's
``model.args``. The tool checks on a random image that the grown network's output equals the original's and
prints both parameter counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="trained EAMamba UNet weights (any file ssmir loads)")
    p.add_argument("--num-blocks", type=int, nargs=4, required=True, metavar="N",
                   help="blocks of levels 1, 2, 3 and the latent (the decoder mirrors them)")
    p.add_argument("--refinement", type=int, required=True, help="refinement blocks")
    p.add_argument("--out", type=Path, required=True, help="grown weights (.safetensors); never overwrites --weights")
    a = p.parse_args(argv)

    import torch

    import ssmir
    from ssmir.models.grow import deepen_eamamba

    if a.out.resolve() == a.weights.resolve():
        raise SystemExit(f"--out {a.out}: is the input file; choose another path")
    try:
        model = ssmir.load_model(a.weights)
    except (ValueError, OSError) as e:  # missing, corrupt or of another kind: one line, naming the file
        raise SystemExit(f"--weights: {e}") from None
    try:
        grown = deepen_eamamba(model, a.num_blocks, a.refinement)
    except ValueError as e:
        raise SystemExit(f"{a.weights}: {e}") from None
    x = torch.rand(1, model.input_channels[0], 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model(x), grown(x))
    if not same:  # cannot happen for blocks with zeroed residual branches; checked rather than assumed
        raise SystemExit("grown network's output differs from the original's; nothing written")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    ssmir.save_model(grown, a.out)

    def count(m):
        return sum(t.numel() for t in m.parameters())

    args = grown.ssmir_config["args"]
    print(f"{a.out}: num_blocks {args['num_blocks']}, refinement {args['num_refinement_blocks']}; "
          f"{count(model):,} -> {count(grown):,} parameters; output identical on a 32x32 test image")


if __name__ == "__main__":
    main()

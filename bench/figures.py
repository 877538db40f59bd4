"""Render docs/img/affinity-coactivation.png: one layer's co-activation, EPLB's layout beside affinity's.

Each panel is the layer's expert-pair co-activation matrix (the lift: how many more tokens picked
both experts than their loads alone predict, darker is more) with the experts in slot order, so the GPUs are the diagonal blocks between
the grey lines: mass inside a block is a pair of picks served by one GPU. Under each panel, one bar
per GPU shows its load on the test half (the bars' scale is shared). The PNG is written with the
standard library (zlib), so the docs need no plotting package.

    python -m bench.figures --trace ../shared/traces/esft/intent.npz --out docs/img/affinity-coactivation.png
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

from switchyard.placement.evaluate import evaluate
from switchyard.placement.formats import load_trace
from switchyard.placement.plan import Plan
from switchyard.placement.policies import get_policy
from switchyard.placement.stats import RoutingStats
from switchyard.placement.topology import Topology

CELL = 6  # pixels per matrix cell
BAR_HEIGHT = 60  # pixels of the tallest load bar
GAP = 16  # pixels between and around panels
INK = np.array([20, 60, 140])  # the darkest co-activation colour (RGB)
GRID = np.array([150, 150, 150])


def panel(pairs: np.ndarray, plan: Plan, layer: int, gpu_load: np.ndarray, load_scale: float) -> np.ndarray:
    """`[H, W, 3]` uint8: the co-activation matrix in `plan`'s slot order with GPU blocks, and load bars."""
    order = plan.physical_to_logical[layer]
    # Lift: how much more often two experts are picked together than their loads alone predict.
    load = pairs.sum(axis=1)
    lift = pairs * pairs.sum() / np.maximum(np.outer(load, load), 1e-12)
    matrix = lift[np.ix_(order, order)]
    shade = np.clip(matrix / max(np.percentile(matrix, 99), 1e-12), 0, 1)  # [P, P] in [0, 1]
    size = len(order) * CELL
    image = np.full((size + GAP + BAR_HEIGHT, size, 3), 255, dtype=np.float64)
    cells = np.kron(shade, np.ones((CELL, CELL)))[:, :, None]
    image[:size] = 255 - cells * (255 - INK)
    slots_per_gpu = plan.topology.slots_per_gpu
    for boundary in range(0, len(order) + 1, slots_per_gpu):
        edge = min(boundary * CELL, size - 1)
        image[:size, edge] = GRID
        image[edge, :] = GRID
    width = slots_per_gpu * CELL
    for gpu, value in enumerate(gpu_load):
        height = int(round(BAR_HEIGHT * value / load_scale))
        top = size + GAP + BAR_HEIGHT - height
        image[top:size + GAP + BAR_HEIGHT, gpu * width + 2:(gpu + 1) * width - 2] = INK
    return image.astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an `[H, W, 3]` uint8 image as an 8-bit RGB PNG."""
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, required=True, help="an .npz routing trace")
    parser.add_argument("--out", type=Path, default=Path("docs/img/affinity-coactivation.png"))
    parser.add_argument("--layer", type=int, default=12, help="the MoE layer to draw")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args()
    train, test = load_trace(args.trace).split()
    stats = RoutingStats.from_trace(train)
    topology = Topology.for_experts(stats.num_experts, args.nodes, args.gpus_per_node)
    plans = [get_policy(name).place(stats, topology) for name in ("eplb", "affinity")]
    loads = [evaluate(plan, test).gpu_load[args.layer] for plan in plans]
    scale = max(load.max() for load in loads)
    panels = [panel(stats.pair_counts[args.layer], plan, args.layer, load, scale)
              for plan, load in zip(plans, loads)]
    height, width, _ = panels[0].shape
    canvas = np.full((height + 2 * GAP, 2 * width + 3 * GAP, 3), 255, dtype=np.uint8)
    canvas[GAP:GAP + height, GAP:GAP + width] = panels[0]
    canvas[GAP:GAP + height, 2 * GAP + width:2 * GAP + 2 * width] = panels[1]
    write_png(args.out, canvas)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()


def window_figure(cells: list[tuple[str, list[float], list[float]]], time_bound: float, gap_bound: float,
                  path: Path) -> None:
    """Render the per-window distribution of `bench/placement.py`: one column per cell (in order),
    a dot per served window, a bar at the median. Top panel: affinity's MoE time over EPLB's on the
    range 0.6-1.1 (grey line at 1, red at `time_bound`); bottom panel: affinity's balancedness
    minus EPLB's on -0.10..+0.05 (grey at 0, red at `gap_bound`).

    cells: (label, time ratios per window, balance gaps per window); labels go in the caption.
    """
    column, height, dot = 28, 160, 2
    red = np.array([200, 40, 40])
    panels = []
    for values_of, low, high, bound, zero in ((1, 0.6, 1.1, time_bound, 1.0), (2, -0.10, 0.05, gap_bound, 0.0)):
        image = np.full((height, column * len(cells), 3), 255, dtype=np.uint8)

        def row_of(value: float) -> int:
            return int(round((high - np.clip(value, low, high)) / (high - low) * (height - 1)))

        image[row_of(zero), :] = GRID
        image[row_of(bound), :] = red
        for index, cell in enumerate(cells):
            left = index * column
            image[:, left] = GRID if index else image[:, left]
            values = cell[values_of]
            for value in values:
                y = row_of(value)
                image[max(y - dot, 0):y + dot + 1, left + column // 2 - dot:left + column // 2 + dot + 1] = INK
            y = row_of(float(np.median(values)))
            image[y, left + 4:left + column - 4] = 0
        panels.append(image)
    canvas = np.full((2 * height + 3 * GAP, column * len(cells) + 2 * GAP, 3), 255, dtype=np.uint8)
    canvas[GAP:GAP + height, GAP:-GAP] = panels[0]
    canvas[2 * GAP + height:2 * GAP + 2 * height, GAP:-GAP] = panels[1]
    write_png(path, canvas)

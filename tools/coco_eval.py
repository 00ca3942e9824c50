#!/usr/bin/env python
"""Score a COCO results json against a COCO ground-truth json with pycocotools (box and mask AP).

Examples::

    python tools/coco_eval.py datasets/coco/annotations/instances_val2017.json \\
        output/coco_instances_results.json --task bbox segm --output-dir output/coco_eval

The results file is a JSON list of ``{"image_id", "category_id", "score", "bbox": [x, y, w, h],
"segmentation": {"size": [h, w], "counts": "..."}}`` (the file ``COCOEvaluator`` and detectron2
write). Prints detectron2's copy-paste lines and a markdown table; with ``--output-dir`` saves
``coco_eval.json`` (``{task: {metric: AP in percent}}``) and ``coco_eval.md``. Numbers are
pycocotools' own (``COCOeval``), in percent. See docs/recipes/detection.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from eva_core.evaluation import format_results_table
from eva_core.evaluation.coco import evaluate_coco_file, metrics_markdown


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("gt_json", help="COCO ground-truth json (instances_*.json)")
    p.add_argument("results_json", help="detections in the COCO results format")
    p.add_argument("--task", nargs="+", default=["bbox"], choices=["bbox", "segm"])
    p.add_argument("--max-dets-per-image", type=int, default=100)
    p.add_argument("--no-per-class", action="store_true", help="omit the AP-<class> rows")
    p.add_argument("--output-dir", default=None, help="write coco_eval.json and coco_eval.md here")
    args = p.parse_args(argv)
    results = evaluate_coco_file(args.gt_json, args.results_json, args.task,
                                 max_dets_per_image=args.max_dets_per_image, per_class=not args.no_per_class)
    table = metrics_markdown(results, title=f"COCO AP (%) of {args.results_json}")
    print(format_results_table(results))
    print(table)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "coco_eval.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.output_dir, "coco_eval.md"), "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Reference values for q2-eval: pycocotools' COCOeval plus numpy transcriptions of
py-faster-rcnn's voc_eval.py and YOLOv5's val.py metrics, on randomized and edge cases.

Writes tests/fixtures/eval/parity.json (ground truth, detections and every reference number per
case), which `cargo test -p q2-eval` checks to 1e-9. With --q2 PATH it also runs the q2 binary
(`q2 map --json`) on every case, and on --extra more random cases that are not written, and
prints the largest difference per metric.

The VOC and YOLOv5 functions below are transcriptions (references, not q2's code). Where the
originals are undefined or platform dependent, the change is marked `# q2:` and listed in
docs/EVAL.md:
  - sorts that decide ties use kind='stable' (numpy's default quicksort has no defined order of
    equal keys and differs between machines);
  - voc_eval: an IoU with an empty union is 0 (numpy: NaN), a precision 0/0 is skipped in the
    VOC07 maximum (numpy: NaN);
  - categories without positive ground truth are not evaluated by the VOC metric.

Usage (from the repository root; see tools/README.md):
    python3 -m venv /work/venv/coco && /work/venv/coco/bin/pip install pycocotools numpy
    /work/venv/coco/bin/python tools/coco_parity.py --out tests/fixtures/eval/parity.json
    /work/venv/coco/bin/python tools/coco_parity.py --out /tmp/p.json --q2 target/release/q2 --extra 300
"""

import argparse
import contextlib
import importlib.metadata
import copy
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# ----------------------------------------------------------------------------------------------
# pycocotools
# ----------------------------------------------------------------------------------------------


def coco_reference(gt, dt):
    """The 12 stats and the per-category AP (mean of precision[:, :, k, all, 100] > -1)."""
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        if dt:
            cd = cg.loadRes(copy.deepcopy(dt))
        else:
            # loadRes fails on an empty list (anns[0]); an empty result set is this.
            cd = COCO()
            cd.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]), "annotations": []}
            cd.createIndex()
        e = COCOeval(cg, cd, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec = e.eval["precision"]
    per = []
    for k, cid in enumerate(e.params.catIds):
        p = prec[:, :, k, 0, 2]
        p = p[p > -1]
        if p.size:
            per.append({"category_id": int(cid), "ap": float(np.mean(p))})
    return {"stats": [float(s) for s in e.stats], "per_category": per}


# ----------------------------------------------------------------------------------------------
# py-faster-rcnn lib/datasets/voc_eval.py (voc_ap, voc_eval), on COCO-format input
# ----------------------------------------------------------------------------------------------


def voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            sel = prec[rec >= t]
            sel = sel[~np.isnan(sel)]  # q2: 0/0 precisions do not take part (numpy max: NaN)
            if sel.size == 0:
                p = 0
            else:
                p = np.max(sel)
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def voc_eval_class(gt, dt, classname, ovthresh=0.5, use_07_metric=False, plus1=False):
    """voc_eval for one class; None when the class has no positive box (q2 skips it)."""
    p = 1.0 if plus1 else 0.0
    class_recs = {}
    npos = 0
    for img in gt["images"]:
        R = [a for a in gt["annotations"] if a["image_id"] == img["id"] and a["category_id"] == classname]
        bbox = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in R], dtype=float).reshape(-1, 4)
        # q2: iscrowd boxes are treated as difficult
        difficult = np.array([bool(a.get("difficult", 0)) or bool(a.get("iscrowd", 0)) for a in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[img["id"]] = {"bbox": bbox, "difficult": difficult, "det": det}
    if npos == 0:
        return None
    dets = [d for d in dt if d["category_id"] == classname]
    image_ids = [d["image_id"] for d in dets]
    confidence = np.array([d["score"] for d in dets], dtype=float)
    BB = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3]] for d in dets], dtype=float).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence, kind="stable")  # q2: stable
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + p, 0.0)
            ih = np.maximum(iymax - iymin + p, 0.0)
            inters = iw * ih
            uni = (bb[2] - bb[0] + p) * (bb[3] - bb[1] + p) + (BBGT[:, 2] - BBGT[:, 0] + p) * (BBGT[:, 3] - BBGT[:, 1] + p) - inters
            overlaps = np.where(uni > 0, inters / np.where(uni > 0, uni, 1.0), 0.0)  # q2: empty union -> 0
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    with np.errstate(invalid="ignore"):
        prec = tp / (tp + fp)
        return voc_ap(rec, prec, use_07_metric)


def voc_reference(gt, dt, use_07, plus1):
    aps, per = [], []
    for cid in sorted(c["id"] for c in gt["categories"]):
        ap = voc_eval_class(gt, dt, cid, use_07_metric=use_07, plus1=plus1)
        if ap is None:
            continue
        aps.append(ap)
        per.append({"category_id": cid, "ap": float(ap)})
    return {"map": float(np.mean(aps)) if aps else -1.0, "per_category": per}


# ----------------------------------------------------------------------------------------------
# ultralytics/yolov5 val.py (process_batch, v6.2+) and utils/metrics.py (ap_per_class, compute_ap)
# ----------------------------------------------------------------------------------------------

trapz = getattr(np, "trapezoid", None) or np.trapz


def box_iou(box1, box2, eps=1e-7):
    (a1, a2), (b1, b2) = np.split(box1[:, None], 2, axis=2), np.split(box2[None], 2, axis=2)
    inter = (np.minimum(a2, b2) - np.maximum(a1, b1)).clip(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


def process_batch(detections, labels, iouv):
    correct = np.zeros((detections.shape[0], iouv.shape[0])).astype(bool)
    iou = box_iou(labels[:, 1:], detections[:, :4])
    correct_class = labels[:, 0:1] == detections[:, 5]
    for i in range(len(iouv)):
        x = np.nonzero((iou >= iouv[i]) & correct_class)  # torch.where: row-major
        if x[0].shape[0]:
            matches = np.concatenate((np.stack(x, 1), iou[x[0], x[1]][:, None]), 1)
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort(kind="stable")[::-1]]  # q2: stable
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
            correct[matches[:, 1].astype(int), i] = True
    return correct


def compute_ap(recall, precision):
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    ap = trapz(np.interp(x, mrec, mpre), x)
    return ap, mpre, mrec


def ap_per_class(tp, conf, pred_cls, target_cls, eps=1e-16):
    i = np.argsort(-conf, kind="stable")  # q2: stable
    tp, conf, pred_cls = tp[i], conf[i], pred_cls[i]
    unique_classes, nt = np.unique(target_cls, return_counts=True)
    nc = unique_classes.shape[0]
    ap = np.zeros((nc, tp.shape[1]))
    for ci, c in enumerate(unique_classes):
        i = pred_cls == c
        n_l = nt[ci]
        n_p = i.sum()
        if n_p == 0 or n_l == 0:
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_l + eps)
        precision = tpc / (tpc + fpc)
        for j in range(tp.shape[1]):
            ap[ci, j], mpre, mrec = compute_ap(recall[:, j], precision[:, j])
    return ap, unique_classes


def yolo_reference(gt, dt):
    iouv = np.linspace(0.5, 0.95, 10)
    niou = 10
    stats = []
    for img in gt["images"]:
        L = [a for a in gt["annotations"] if a["image_id"] == img["id"] and not a.get("iscrowd", 0) and not a.get("difficult", 0)]
        labels = np.array([[a["category_id"], a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in L], dtype=float).reshape(-1, 5)
        P = [d for d in dt if d["image_id"] == img["id"]]
        order = np.argsort([-d["score"] for d in P], kind="stable")  # NMS output order
        P = [P[i] for i in order]
        pred = np.array([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2], d["bbox"][1] + d["bbox"][3], d["score"], d["category_id"]] for d in P], dtype=float).reshape(-1, 6)
        nl = len(labels)
        tcls = labels[:, 0].tolist() if nl else []
        if len(pred) == 0:
            if nl:
                stats.append((np.zeros((0, niou), dtype=bool), np.zeros(0), np.zeros(0), tcls))
            continue
        if nl:
            correct = process_batch(pred, labels, iouv)
        else:
            correct = np.zeros((pred.shape[0], niou), dtype=bool)
        stats.append((correct, pred[:, 4], pred[:, 5], tcls))
    stats = [np.concatenate([np.asarray(s) for s in x], 0) for x in zip(*stats)]
    if not len(stats) or len(stats[3]) == 0:
        return {"map50": 0.0, "map50_95": 0.0, "per_category": []}
    ap, classes = ap_per_class(stats[0], stats[1], stats[2], stats[3])
    ap50, apm = ap[:, 0], ap.mean(1)
    per = [{"category_id": int(c), "ap50": float(a50), "ap50_95": float(a)} for c, a50, a in zip(classes, ap50, apm)]
    if not stats[0].any():  # val.py reports 0 when nothing is correct
        return {"map50": 0.0, "map50_95": 0.0, "per_category": per}
    return {"map50": float(ap50.mean()), "map50_95": float(apm.mean()), "per_category": per}


def all_references(gt, dt):
    return {
        "coco": coco_reference(gt, dt),
        "voc07": voc_reference(gt, dt, True, False),
        "voc12": voc_reference(gt, dt, False, False),
        "voc07_plus1": voc_reference(gt, dt, True, True),
        "voc12_plus1": voc_reference(gt, dt, False, True),
        "yolo": yolo_reference(gt, dt),
    }


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


def r2(v):
    return round(float(v), 2)


def random_case(rng, name, n_images=6, n_cats=4, gt_max=6, dt_max=15, p_crowd=0.05, p_diff=0.0, score_dec=3, str_ids=False, p_dup=0.05, p_boundary=0.05, gt_cats=None, big=300.0):
    """Random boxes in 640x480 images; detections near the ground truth (jittered, sometimes
    of another class), random ones, exact duplicates; scores rounded to `score_dec` decimals."""
    ids = rng.choice(np.arange(1, 10 * n_images + 10), size=n_images, replace=False).tolist()
    if str_ids:
        ids = ["img_%04d" % i for i in ids]
    cat_ids = sorted(rng.choice(np.arange(1, 100), size=n_cats, replace=False).tolist())
    cats_listed = list(cat_ids)
    rng.shuffle(cats_listed)
    gt_classes = cat_ids if gt_cats is None else cat_ids[:gt_cats]
    gt = {"images": [{"id": i} for i in ids], "annotations": [], "categories": [{"id": int(c)} for c in cats_listed]}
    dt = []
    aid = 1
    for img in ids:
        boxes = []
        for _ in range(int(rng.integers(0, gt_max + 1))):
            s = float(np.exp(rng.uniform(np.log(2.0), np.log(big))))
            ar = float(np.exp(rng.uniform(-0.7, 0.7)))
            w, h = min(s * ar, 640.0), min(s / ar, 480.0)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            b = [r2(x), r2(y), r2(w), r2(h)]
            u = rng.random()
            if u < p_boundary:
                area = float(rng.choice([1024.0, 9216.0]))
            elif u < 0.5:
                area = r2(b[2] * b[3])
            else:
                area = r2(b[2] * b[3] * rng.uniform(0.4, 1.0))
            c = int(rng.choice(gt_classes))
            a = {"id": aid, "image_id": img, "category_id": c, "bbox": b, "area": area, "iscrowd": int(rng.random() < p_crowd)}
            if p_diff and rng.random() < p_diff:
                a["difficult"] = 1
            gt["annotations"].append(a)
            boxes.append((c, b))
            aid += 1
        for _ in range(int(rng.integers(0, dt_max + 1))):
            if dt and rng.random() < p_dup and dt[-1]["image_id"] == img:
                dt.append(dict(dt[-1]))
                continue
            if boxes and rng.random() < 0.6:
                c, b = boxes[int(rng.integers(0, len(boxes)))]
                j = rng.normal(0, 0.1, size=4)
                bb = [b[0] + j[0] * b[2], b[1] + j[1] * b[3], b[2] * np.exp(j[2]), b[3] * np.exp(j[3])]
                if rng.random() < 0.15:
                    c = int(rng.choice(cat_ids))
            else:
                s = float(np.exp(rng.uniform(np.log(2.0), np.log(big))))
                bb = [rng.uniform(0, 600), rng.uniform(0, 440), s, s * float(np.exp(rng.uniform(-0.5, 0.5)))]
                c = int(rng.choice(cat_ids))
            dt.append({"image_id": img, "category_id": int(c), "bbox": [r2(v) for v in bb], "score": round(float(rng.random()), score_dec)})
    order = rng.permutation(len(dt))
    dt = [dt[i] for i in order]
    return {"name": name, "gt": gt, "dt": dt}


def det(img, cat, b, s):
    return {"image_id": img, "category_id": cat, "bbox": b, "score": s}


def ann(aid, img, cat, b, area=None, crowd=0, difficult=0):
    a = {"id": aid, "image_id": img, "category_id": cat, "bbox": b, "area": float(b[2] * b[3]) if area is None else area, "iscrowd": crowd}
    if difficult:
        a["difficult"] = 1
    return a


def edge_cases(rng):
    cases = []
    # IoU exactly at thresholds: 0.5 ([0,0,10,5] in [0,0,10,10]), 0.75, 0.55, 0.95; VOC's > 0.5 vs COCO's >= 0.5.
    gt = {"images": [{"id": i} for i in (1, 2, 3, 4)], "categories": [{"id": 1}, {"id": 2}],
          "annotations": [ann(1, 1, 1, [0, 0, 10, 10]), ann(2, 2, 1, [0, 0, 10, 10]), ann(3, 3, 1, [0, 0, 20, 10]), ann(4, 4, 2, [0, 0, 100, 100])]}
    dt = [det(1, 1, [0, 0, 10, 5], 0.9), det(2, 1, [0, 0, 10, 7.5], 0.8), det(3, 1, [0, 0, 11, 10], 0.7), det(4, 2, [0, 0, 95, 100], 0.6), det(4, 2, [0, 0, 100, 55], 0.5)]
    cases.append({"name": "iou_exactly_at_thresholds", "gt": gt, "dt": dt})
    # Area-range boundaries: GT area fields 1024 and 9216 exactly, 32x32 and 96x96 boxes, detections of area 1024/9216 unmatched.
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 5}],
          "annotations": [ann(1, 1, 5, [0, 0, 32, 32]), ann(2, 1, 5, [100, 100, 96, 96]), ann(3, 2, 5, [0, 0, 40, 40], area=1024.0), ann(4, 2, 5, [100, 100, 90, 90], area=9216.0),
                          ann(5, 2, 5, [300, 300, 31.99, 32]), ann(6, 2, 5, [400, 0, 96.01, 96])]}
    dt = [det(1, 5, [0, 0, 32, 32], 0.9), det(1, 5, [100, 100, 96, 96], 0.8), det(1, 5, [500, 500, 32, 32], 0.95), det(1, 5, [300, 0, 96, 96], 0.85),
          det(2, 5, [0, 0, 40, 40], 0.7), det(2, 5, [100, 100, 90, 90], 0.75), det(2, 5, [300, 300, 32, 32], 0.6), det(2, 5, [400, 0, 96, 96], 0.65), det(2, 5, [200, 200, 32, 32.0001], 0.99)]
    cases.append({"name": "area_boundaries_32sq_96sq", "gt": gt, "dt": dt})
    # Crowd regions: several detections inside one crowd box, crowd boxes of every size, a crowd-only category.
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}, {"id": 3}],
          "annotations": [ann(1, 1, 1, [0, 0, 200, 200], crowd=1), ann(2, 1, 1, [300, 300, 20, 20]), ann(3, 1, 1, [50, 50, 30, 30]),
                          ann(4, 2, 1, [0, 0, 50, 50], crowd=1), ann(5, 2, 1, [10, 10, 20, 20]), ann(6, 2, 2, [0, 0, 100, 100], crowd=1), ann(7, 1, 3, [0, 0, 10, 10])]}
    dt = [det(1, 1, [10, 10, 30, 30], 0.9), det(1, 1, [50, 50, 30, 30], 0.85), det(1, 1, [100, 100, 50, 50], 0.8), det(1, 1, [150, 150, 100, 100], 0.7), det(1, 1, [300, 300, 20, 20], 0.6),
          det(1, 1, [0, 0, 200, 200], 0.5), det(2, 1, [10, 10, 20, 20], 0.95), det(2, 1, [12, 12, 20, 20], 0.94), det(2, 1, [0, 0, 5, 5], 0.3), det(2, 2, [0, 0, 50, 50], 0.9), det(2, 2, [5, 5, 50, 50], 0.4),
          det(1, 3, [0, 0, 10, 10], 0.2)]
    cases.append({"name": "crowd_regions", "gt": gt, "dt": dt})
    # More than 100 detections of one category in one image (and 120 of another), with ties at the cut.
    gt = {"images": [{"id": 7}, {"id": 3}], "categories": [{"id": 1}, {"id": 2}], "annotations": []}
    aid = 1
    for img in (7, 3):
        for k in range(12):
            gt["annotations"].append(ann(aid, img, 1 + k % 2, [r2(40 * k), r2(30 * (k % 5)), 25.0 + k, 20.0 + 2 * k]))
            aid += 1
    dt = []
    for k in range(150):
        j = k % 12
        dt.append(det(7, 1, [r2(40 * j + rng.normal(0, 3)), r2(30 * (j % 5) + rng.normal(0, 3)), r2(25 + j + rng.normal(0, 2)), r2(20 + 2 * j + rng.normal(0, 2))], round(float(rng.random()), 2)))
    for k in range(120):
        j = k % 12
        dt.append(det(3, 2, [r2(40 * j + rng.normal(0, 4)), r2(30 * (j % 5) + rng.normal(0, 4)), r2(25 + j), r2(20 + 2 * j)], round(float(rng.random()), 1)))
    cases.append({"name": "over_100_detections_per_image", "gt": gt, "dt": dt})
    # Duplicate detections (identical box and score) and identical ground-truth boxes (IoU ties between GT).
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
          "annotations": [ann(1, 1, 1, [10, 10, 50, 50]), ann(2, 1, 1, [10, 10, 50, 50]), ann(3, 1, 1, [100, 100, 30, 30]), ann(4, 2, 1, [0, 0, 40, 40], crowd=1), ann(5, 2, 1, [0, 0, 40, 40])]}
    dt = [det(1, 1, [10, 10, 50, 50], 0.9)] * 3 + [det(1, 1, [12, 10, 50, 50], 0.9), det(1, 1, [100, 100, 30, 30], 0.5), det(1, 1, [100, 100, 30, 30], 0.5),
                                                    det(2, 1, [0, 0, 40, 40], 0.7), det(2, 1, [0, 0, 40, 40], 0.7), det(2, 1, [1, 1, 40, 40], 0.7)]
    cases.append({"name": "duplicates_and_gt_iou_ties", "gt": gt, "dt": dt})
    # Score ties across images: image ids listed out of order, equal scores everywhere.
    gt = {"images": [{"id": 30}, {"id": 10}, {"id": 20}], "categories": [{"id": 4}],
          "annotations": [ann(1, 30, 4, [0, 0, 20, 20]), ann(2, 10, 4, [0, 0, 20, 20]), ann(3, 20, 4, [0, 0, 20, 20])]}
    dt = [det(30, 4, [0, 0, 20, 20], 0.5), det(10, 4, [50, 50, 20, 20], 0.5), det(20, 4, [0, 0, 20, 20], 0.5), det(10, 4, [0, 0, 20, 20], 0.5), det(20, 4, [60, 60, 20, 20], 0.5), det(30, 4, [0, 0, 21, 20], 0.5)]
    cases.append({"name": "score_ties_across_images", "gt": gt, "dt": dt})
    # Images without ground truth; a category with ground truth but no detections; one with detections but no ground truth.
    gt = {"images": [{"id": i} for i in (1, 2, 3, 4)], "categories": [{"id": 1}, {"id": 2}, {"id": 3}],
          "annotations": [ann(1, 1, 1, [0, 0, 50, 50]), ann(2, 2, 2, [10, 10, 60, 40])]}
    dt = [det(1, 1, [0, 0, 50, 50], 0.9), det(3, 1, [0, 0, 50, 50], 0.95), det(4, 1, [5, 5, 50, 50], 0.3), det(3, 3, [0, 0, 10, 10], 0.99), det(1, 3, [0, 0, 50, 50], 0.1)]
    cases.append({"name": "images_and_categories_without_gt_or_dt", "gt": gt, "dt": dt})
    # No detections at all.
    cases.append({"name": "no_detections", "gt": copy.deepcopy(gt), "dt": []})
    # No ground truth at all: every stat -1.
    cases.append({"name": "no_ground_truth", "gt": {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []}, "dt": [det(1, 1, [0, 0, 5, 5], 0.5)]})
    # Zero-size boxes.
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}],
          "annotations": [ann(1, 1, 1, [10, 10, 0, 20]), ann(2, 1, 1, [50, 50, 20, 0], area=0.0), ann(3, 1, 1, [100, 100, 20, 20]), ann(4, 1, 1, [200, 200, 0, 0], crowd=1)]}
    dt = [det(1, 1, [10, 10, 0, 20], 0.9), det(1, 1, [100, 100, 20, 20], 0.8), det(1, 1, [200, 200, 0, 0], 0.7), det(1, 1, [50, 50, 20, 0], 0.6), det(1, 1, [100, 100, 0, 20], 0.5)]
    cases.append({"name": "zero_size_boxes", "gt": gt, "dt": dt})
    # Difficult boxes: a difficult one detected first (VOC07's 0/0 precision), duplicates on difficult boxes.
    gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}, {"id": 2}],
          "annotations": [ann(1, 1, 1, [0, 0, 50, 50], difficult=1), ann(2, 1, 1, [100, 100, 50, 50]), ann(3, 2, 1, [0, 0, 30, 30]), ann(4, 2, 2, [0, 0, 30, 30], difficult=1)]}
    dt = [det(1, 1, [0, 0, 50, 50], 0.99), det(1, 1, [1, 1, 50, 50], 0.98), det(1, 1, [100, 100, 50, 50], 0.9), det(2, 1, [0, 0, 30, 30], 0.5), det(2, 1, [60, 60, 30, 30], 0.6), det(2, 2, [0, 0, 30, 30], 0.7)]
    cases.append({"name": "difficult_boxes", "gt": gt, "dt": dt})
    # String image ids (YOLOv5 writes non-numeric file stems as strings).
    c = random_case(rng, "string_image_ids", n_images=5, n_cats=3, str_ids=True)
    cases.append(c)
    # A case where no detection is correct at any threshold (YOLOv5 then reports 0).
    gt = {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": [ann(1, 1, 1, [0, 0, 10, 10])]}
    cases.append({"name": "nothing_correct", "gt": gt, "dt": [det(1, 1, [20, 20, 10, 10], 0.9), det(1, 1, [0, 0, 3, 3], 0.8)]})
    return cases


def random_cases(rng, n, prefix="random"):
    out = []
    for i in range(n):
        kw = dict(
            n_images=int(rng.integers(1, 7)),
            n_cats=int(rng.integers(1, 5)),
            gt_max=int(rng.integers(0, 7)),
            dt_max=int(rng.integers(0, 12)),
            p_crowd=float(rng.choice([0.0, 0.1, 0.3])),
            p_diff=float(rng.choice([0.0, 0.0, 0.2])),
            score_dec=int(rng.choice([1, 2, 3, 6])),
            p_boundary=float(rng.choice([0.0, 0.2])),
            big=float(rng.choice([60.0, 300.0])),
        )
        if rng.random() < 0.3:
            kw["gt_cats"] = max(1, kw["n_cats"] - 1)
        if i % 4 == 3:
            # Dense: more than 10 detections per image and category (maxDets=10 cuts).
            kw.update(n_images=int(rng.integers(2, 5)), n_cats=int(rng.integers(1, 3)), gt_max=8, dt_max=30)
            kw.pop("gt_cats", None)
        out.append(random_case(rng, f"{prefix}_{i:03d}", **kw))
    return out


# ----------------------------------------------------------------------------------------------
# Checking the q2 binary
# ----------------------------------------------------------------------------------------------


def q2_results(q2, case, tmp):
    gp, dp = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dt.json")
    with open(gp, "w") as f:
        json.dump(case["gt"], f)
    with open(dp, "w") as f:
        json.dump(case["dt"], f)
    out = {}
    for key, metric, plus1 in [("coco", "coco", False), ("voc07", "voc07", False), ("voc12", "voc12", False), ("voc07_plus1", "voc07", True), ("voc12_plus1", "voc12", True), ("yolo", "yolo", False)]:
        cmd = [q2, "map", "--gt", gp, "--dt", dp, "--metric", metric, "--json"] + (["--pixel-plus1"] if plus1 else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{case['name']}: {' '.join(cmd)} failed: {r.stderr}")
        out[key] = json.loads(r.stdout)
    return out


def numbers(ref):
    """Flattens a reference result to {label: value}."""
    flat = {}
    if "stats" in ref:
        for i, v in enumerate(ref["stats"]):
            flat[f"stats[{i}]"] = v
    for k in ("map", "map50", "map50_95"):
        if k in ref:
            flat[k] = ref[k]
    for c in ref["per_category"]:
        for k, v in c.items():
            if k != "category_id":
                flat[f"cat {c['category_id']} {k}"] = v
    return flat


def compare(name, refs, got, worst):
    """Records the largest difference per metric in `worst`; returns (numbers, bit-identical)."""
    n = exact = 0
    for key, ref in refs.items():
        a, b = numbers(ref), numbers(got[key])
        if a.keys() != b.keys():
            raise SystemExit(f"{name} {key}: q2 reports {sorted(b)} but the reference {sorted(a)}")
        for k in a:
            d = abs(a[k] - b[k])
            n += 1
            exact += a[k] == b[k]
            if d > worst.get(key, (-1.0, ""))[0]:
                worst[key] = (d, f"{name} {k}")
            if d > 1e-9:
                print(f"MISMATCH {name} {key} {k}: reference {a[k]!r} q2 {b[k]!r}")
    return n, exact


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/eval/parity.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--random", type=int, default=40, help="randomized cases written to the fixture")
    ap.add_argument("--q2", help="q2 binary to check against every case")
    ap.add_argument("--extra", type=int, default=0, help="further random cases, checked with --q2 and not written")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    cases = edge_cases(rng) + random_cases(rng, args.random)
    for c in cases:
        c.update(all_references(c["gt"], c["dt"]))
    doc = {
        "generator": "tools/coco_parity.py",
        "seed": args.seed,
        "pycocotools": importlib.metadata.version("pycocotools"),
        "numpy": np.__version__,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != "cases"))
        f.write(', "cases": [\n' + ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]}\n")
    print(f"wrote {args.out}: {len(cases)} cases, {os.path.getsize(args.out)} bytes", file=sys.stderr)
    if args.q2:
        extra = random_cases(np.random.default_rng(args.seed + 1), args.extra, prefix="extra")
        for c in extra:
            c.update(all_references(c["gt"], c["dt"]))
        worst = {}
        n = exact = 0
        with tempfile.TemporaryDirectory() as tmp:
            for c in cases + extra:
                refs = {k: c[k] for k in ("coco", "voc07", "voc12", "voc07_plus1", "voc12_plus1", "yolo")}
                dn, de = compare(c["name"], refs, q2_results(args.q2, c, tmp), worst)
                n, exact = n + dn, exact + de
        print(f"checked {len(cases) + len(extra)} cases against {args.q2}: {n} numbers, {exact} bit-identical")
        for k, (d, where) in worst.items():
            print(f"  {k:12s} max |q2 - reference| = {d:.3g}  ({where})")


if __name__ == "__main__":
    main()

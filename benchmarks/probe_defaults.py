"""The probe that chose the CPU defaults of configs/ (RoIs per image, lr, width): a lean loop over the
real model classes on the embedded synthetic data, with no Hydra, albumentations or pycocotools, so it
also runs on a bare GPU machine. It prints a quick AP50 (all-point, per class, IoU 0.5; close to, not
the same as, pycocotools' AP50) at the iterations listed in "evals".

    python benchmarks/probe_defaults.py '{"width": 0.125, "lr": 0.04, "rois": 128, "iters": 1500, "evals": [500, 1000, 1500], "seed": 1}'

Keys: width, lr, iters, evals, seed, rois (RoIs per image), post_train (RPN post-NMS top-k in
training), rep (fc6/fc7 width), bs (images per batch), min_size, max_size, warmup, schedule, steps,
stride, pooler (align|pool), anchors, device (default cuda), root (dataset folder), ntrain.
The README's "Defaults" section quotes its results (run on an H100, 8 configurations at a time).
"""
import json, sys, time
import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou
from detector.data.synthetic import ensure_synthetic_split
from detector.modeling import FasterRCNN, DetectionTransform, BoxCoder, Matcher, BalancedPositiveNegativeSampler
from detector.modeling.backbone import VGG16Backbone
from detector.modeling.rpn import RPN, RPNHead, AnchorGenerator
from detector.modeling.roi_heads import RoIHeads, FC2BoxHead, FastRCNNPredictor
from detector.ops import RoIAlign, RoIPool
from detector.engine import build_optimizer, build_lr_scheduler

def load(split, n, seed, root):
    imgs_dir, ann = ensure_synthetic_split(root, split=split, num_images=n, seed=seed)
    a = json.load(open(ann))
    by = {im["id"]: [] for im in a["images"]}
    for x in a["annotations"]:
        by[x["image_id"]].append(x)
    data = []
    for im in a["images"]:
        arr = np.asarray(Image.open(imgs_dir / im["file_name"]).convert("RGB"))
        boxes = torch.tensor([[x["bbox"][0], x["bbox"][1], x["bbox"][0] + x["bbox"][2], x["bbox"][1] + x["bbox"][3]] for x in by[im["id"]]], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([x["category_id"] for x in by[im["id"]]], dtype=torch.int64)
        data.append((torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), boxes, labels))
    return data

def build(c, K=5):
    stride = c.get("stride", 32)
    bb = VGG16Backbone(stride=stride, batch_norm=True, width=c["width"])
    ch = bb.out_channels
    sizes = c.get("anchors", [16, 32, 64, 128, 256]); ratios = [0.5, 1.0, 2.0]
    rpn = RPN(head=RPNHead(in_channels=ch, num_anchors=len(sizes) * 3), anchor_generator=AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=stride),
              box_coder=BoxCoder(), matcher=Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True),
              sampler=BalancedPositiveNegativeSampler(batch_size_per_image=256, positive_fraction=0.5),
              pre_nms_topk_train=2000, post_nms_topk_train=c.get("post_train", 512), pre_nms_topk_test=1000, post_nms_topk_test=300,
              nms_thresh=0.7, smooth_l1_beta=1 / 9)
    if c.get("pooler", "align") == "align":
        pooler = RoIAlign(output_size=7, spatial_scale=1 / stride, sampling_ratio=2, aligned=True)
    else:
        pooler = RoIPool(output_size=7, spatial_scale=1 / stride)
    heads = RoIHeads(pooler=pooler, box_head=FC2BoxHead(in_channels=ch, pooled_size=7, representation_size=c.get("rep", 512)),
                     predictor=FastRCNNPredictor(in_features=c.get("rep", 512), num_classes=K), box_coder=BoxCoder(weights=(10, 10, 5, 5)),
                     matcher=Matcher(high_threshold=0.5, low_threshold=0.5), sampler=BalancedPositiveNegativeSampler(batch_size_per_image=c.get("rois", 512), positive_fraction=0.25))
    tr = DetectionTransform(min_size=c.get("min_size", 256), max_size=c.get("max_size", 480), pixel_mean=[0.485, 0.456, 0.406], pixel_std=[0.229, 0.224, 0.225])
    return FasterRCNN(backbone=bb, rpn=rpn, roi_heads=heads, transform=tr)

def ap50(model, val, dev, K=5):
    model.eval(); dets = {k: [] for k in range(1, K + 1)}; ngt = {k: 0 for k in range(1, K + 1)}

    with torch.no_grad():
        for i in range(0, len(val), 8):
            chunk = val[i:i + 8]
            outs = model([x[0].to(dev).float() / 255 for x in chunk])
            for j, (o, (img, b, l)) in enumerate(zip(outs, chunk)):
                for k in range(1, K + 1):
                    g = b[l == k]; ngt[k] += len(g)
                    m = o["labels"].cpu() == k
                    for s, bx in zip(o["scores"].cpu()[m], o["boxes"].cpu()[m]):
                        dets[k].append((float(s), i + j, bx))
    gt_by = {}
    for idx, (img, b, l) in enumerate(val):
        gt_by[idx] = (b, l)
    aps = []
    for k in range(1, K + 1):
        d = sorted(dets[k], key=lambda x: -x[0]); used = {}
        tp = []
        for s, idx, bx in d:
            b, l = gt_by[idx]; g = b[l == k]
            if len(g) == 0: tp.append(0); continue
            iou = box_iou(bx[None], g)[0]; j = int(iou.argmax())
            u = used.setdefault(idx, set())
            if iou[j] >= 0.5 and j not in u: u.add(j); tp.append(1)
            else: tp.append(0)
        tp = np.array(tp); fp = 1 - tp
        if ngt[k] == 0: continue
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        rec = ctp / ngt[k]; prec = ctp / np.maximum(ctp + cfp, 1e-9)
        mrec = np.concatenate([[0], rec, [1]]); mpre = np.concatenate([[0], prec, [0]])
        for i in range(len(mpre) - 2, -1, -1): mpre[i] = max(mpre[i], mpre[i + 1])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])))
    model.train()
    return float(np.mean(aps))

def main():
    c = json.loads(sys.argv[1]); dev = torch.device(c.get("device", "cuda"))
    torch.manual_seed(c.get("seed", 0)); np.random.seed(0)
    root = c.get("root", "/tmp/synth")
    train = load("train", c.get("ntrain", 1000), 1, root); val = load("val", 200, 2, root)
    model = build(c).to(dev)
    opt = build_optimizer(model, base_lr=c["lr"], momentum=0.9, weight_decay=1e-4)
    it_total = c["iters"]
    sched = build_lr_scheduler(opt, max_iter=it_total, warmup_iters=c.get("warmup", 100), warmup_factor=0.001, schedule=c.get("schedule", "cosine"), steps=c.get("steps", []))
    bs = c.get("bs", 4); g = torch.Generator().manual_seed(c.get("seed", 0))
    perm = torch.randperm(len(train), generator=g).tolist(); p = 0
    t0 = time.time(); res = []
    for it in range(it_total):
        if p + bs > len(perm): perm = torch.randperm(len(train), generator=g).tolist(); p = 0
        batch = [train[j] for j in perm[p:p + bs]]; p += bs
        imgs, tgts = [], []
        for img, b, l in batch:
            img = img.to(dev).float() / 255; b = b.clone()
            if torch.rand(1, generator=g).item() < 0.5:
                img = img.flip(-1); W = img.shape[-1]; b = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1)
            imgs.append(img); tgts.append({"boxes": b.to(dev), "labels": l.to(dev)})
        losses = model(imgs, tgts); loss = sum(losses.values())
        opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0); opt.step(); sched.step()
        if (it + 1) in c.get("evals", [it_total]):
            res.append((it + 1, round(ap50(model, val, dev), 3)))
    print(json.dumps({"cfg": c, "ap50": res, "sec": round(time.time() - t0)}), flush=True)

if __name__ == "__main__":
    main()

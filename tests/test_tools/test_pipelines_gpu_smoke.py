"""tools/benchmarks/pipelines_gpu.py on the CPU (--smoke): the GPU-run driver works end to end -- the detection
task pre-trains its backbone on shapes classification, initialises Mask R-CNN from that checkpoint (position
embedding resized) and trains under vla_mm.TimeBudgetHook's lr plan; the seg task trains UperNet."""
import json
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_pipelines_gpu_smoke_seg_and_det(tmp_path):
    out, work = tmp_path / 'out', tmp_path / 'work'
    r = subprocess.run([sys.executable, osp.join(ROOT, 'tools/benchmarks/pipelines_gpu.py'), '--smoke',
                        '--tasks', 'seg,det', '--out', str(out), '--work', str(work)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.load(open(out / 'summary.json'))
    assert summary['seg']['rc'] == 0 and summary['seg']['mIoU'] is not None
    det = summary['det']
    assert det['rc'] == 0 and det['init'] == 'cls' and det['pretrain']['rc'] == 0
    assert det['pretrain']['top1'] is not None and det['iters'] >= 1
    assert det['coco/bbox_mAP'] is not None and det['coco/segm_mAP'] is not None
    # the detector really started from the pre-training checkpoint, and the hook owned the lr
    log = (work / 'det.stdout').read_text()
    assert 'load backbone. in model from' in log and 'det_pre' in log
    assert 'Resize the pos_embed shape' in log
    derived = (work / 'det.py').read_text()
    assert "type='vla_mm.TimeBudgetHook'" in derived and 'lr_plan=' in derived and 'param_scheduler = []' in derived
    assert (out / 'det.png').is_file() and (out / 'seg.png').is_file()
    # curves of the tasks run (a column each), and the same figure again from the logs alone (--replot)
    from PIL import Image
    w, h = Image.open(out / 'curves.png').size
    assert w / h < 1.5  # 2 columns (5 x 8 in each): 1.25; 3 columns would be 1.875
    replot = tmp_path / 'replot'
    r = subprocess.run([sys.executable, osp.join(ROOT, 'tools/benchmarks/pipelines_gpu.py'), '--replot',
                        '--tasks', 'seg,det', '--out', str(replot), '--work', str(work)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Image.open(replot / 'curves.png').size == Image.open(out / 'curves.png').size


def test_detection_configs_with_classification_pretraining():
    cls = Config.fromfile(osp.join(ROOT, 'configs/linear_vit/linear-vit-t-p4_shapes-cls.py'))
    det = Config.fromfile(osp.join(ROOT, 'configs/linear_vit/mask-rcnn_linear-vit-t_fpn_shapes-det_cls-pre.py'))
    # same backbone in both (so every pre-trained tensor has a place), the detector initialised from it
    for key in ('arch', 'patch_size', 'stem', 'mixer'):
        assert cls.model.backbone[key] == det.model.backbone[key], key
    init = det.model.backbone.init_cfg
    assert init.type == 'Pretrained' and init.prefix == 'backbone.'
    assert init.checkpoint.startswith('work_dirs/linear-vit-t-p4_shapes-cls/')
    assert init.checkpoint.endswith(f'epoch_{cls.train_cfg.max_epochs}.pth')

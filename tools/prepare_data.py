"""Prepare or check data sets.

Generate the bundled synthetic shapes data (deterministic; a no-op when already generated with the same
parameters)::

    python tools/prepare_data.py shapes [--root data/shapes] [--task cls|seg|det|all] [--image-size N]
                                        [--num-train N] [--num-val N] [--seed N] [--classes circle,star,...]
                                        [--min-shapes N] [--max-shapes N] [--workers N] [--force]

``--task cls`` writes ``<root>/cls`` (ImageNet layout), ``seg`` writes ``<root>/seg`` (ADE20K layout),
``det`` writes ``<root>/det`` (COCO layout); ``all`` (default) writes the three.

Check that a real data set has its standard layout (one line per missing part, exit 1 when any)::

    python tools/prepare_data.py check imagenet data/imagenet
    python tools/prepare_data.py check ade20k   data/ade/ADEChallengeData2016
    python tools/prepare_data.py check coco     data/coco
"""
import argparse
import os
import os.path as osp
import sys

IMG_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


# ---------------------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------------------
def _entries(path):
    try:
        return [e for e in os.scandir(path) if not e.name.startswith('.')]
    except OSError:
        return None


def _check_nonempty_dir(root, rel, what, problems):
    """Append a problem when ``root/rel`` is missing or empty; return its entries (or None)."""
    path = osp.join(root, rel)
    if not osp.isdir(path):
        problems.append(f'missing: {path}/ ({what})')
        return None
    entries = _entries(path)
    if not entries:
        problems.append(f'empty: {path}/ ({what})')
        return None
    return entries


def _check_file(root, rel, what, problems):
    path = osp.join(root, rel)
    if not osp.isfile(path):
        problems.append(f'missing: {path} ({what})')
        return False
    if osp.getsize(path) == 0:
        problems.append(f'empty: {path} ({what})')
        return False
    return True


def _check_ann_file(root, split, problems):
    """ImageNet-style ann file ``meta/<split>.txt``: "relative/path label" lines relative to ``<split>/``."""
    rel = osp.join('meta', f'{split}.txt')
    if not _check_file(root, rel, f'"<path> <label>" lines for {split}/', problems):
        return
    with open(osp.join(root, rel)) as f:
        first = f.readline().strip()
    parts = first.rsplit(' ', 1)
    if len(parts) != 2 or not parts[1].lstrip('-').isdigit():
        problems.append(f'bad format: {osp.join(root, rel)} first line {first!r} is not "<path> <label>"')
    elif not osp.isfile(osp.join(root, split, parts[0])):
        problems.append(f'missing: {osp.join(root, split, parts[0])} (first image listed in {rel})')


def check_imagenet(root):
    problems = []
    has_meta = osp.isdir(osp.join(root, 'meta'))
    for split in ('train', 'val'):
        entries = _check_nonempty_dir(root, split, f'{split} images: one sub-folder per class, or files listed '
                                      f'in meta/{split}.txt', problems)
        if entries is None:
            continue
        flat = any(e.is_file() and e.name.lower().endswith(IMG_EXTS) for e in entries)
        if has_meta or flat:
            # with meta/ the ann files are used; a flat folder (the official val/) has no labels without them
            _check_ann_file(root, split, problems)
    return problems


def _ade_root(root):
    sub = osp.join(root, 'ADEChallengeData2016')
    return sub if not osp.isdir(osp.join(root, 'images')) and osp.isdir(sub) else root


def check_ade20k(root):
    root = _ade_root(root)
    problems = []
    counts = {}
    for kind, what in (('images', '.jpg images'), ('annotations', '.png label maps')):
        for split in ('training', 'validation'):
            entries = _check_nonempty_dir(root, osp.join(kind, split), f'{split} {what}', problems)
            if entries is not None:
                counts[kind, split] = {osp.splitext(e.name)[0] for e in entries if e.is_file()}
    for split in ('training', 'validation'):
        imgs, anns = counts.get(('images', split)), counts.get(('annotations', split))
        if imgs is not None and anns is not None:
            missing = imgs - anns
            if missing:
                problems.append(f'missing: {len(missing)} label map(s) in {osp.join(root, "annotations", split)} '
                                f'for images, e.g. {sorted(missing)[0]}.png')
    return problems


def check_coco(root):
    problems = []
    for split in ('train2017', 'val2017'):
        _check_nonempty_dir(root, split, f'{split} images', problems)
    for split in ('train2017', 'val2017'):
        _check_file(root, osp.join('annotations', f'instances_{split}.json'), f'{split} instance annotations',
                    problems)
    return problems


CHECKS = {'imagenet': check_imagenet, 'ade20k': check_ade20k, 'coco': check_coco}


def cmd_check(args):
    root = args.root
    if not osp.isdir(root):
        print(f'error: {root} does not exist or is not a directory', file=sys.stderr)
        return 1
    problems = CHECKS[args.dataset](root)
    for p in problems:
        print(p)
    if problems:
        print(f'{args.dataset}: {len(problems)} problem(s) in {root}')
        return 1
    print(f'{args.dataset}: OK, {root} has the standard layout')
    return 0


# ---------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------
def cmd_shapes(args):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from vla_mm.datasets import shapes as S

    params = dict(image_size=args.image_size, num_train=args.num_train, num_val=args.num_val, seed=args.seed,
                  min_shapes=args.min_shapes, max_shapes=args.max_shapes)
    if args.classes:
        params['classes'] = [c.strip() for c in args.classes.split(',') if c.strip()]
    params = {k: v for k, v in params.items() if v is not None}
    tasks = S.TASKS if args.task == 'all' else (args.task,)
    try:
        resolved = {t: S.resolve_params(t, params) for t in tasks}  # validate everything before writing
        for t in tasks:
            root = osp.join(args.root, t)
            status = S.generate(t, root, resolved[t], num_workers=args.workers, force=args.force, logger='print')
            if status == 'exists':
                print(f'shapes: {root} is up to date (same parameters), nothing to do')
    except S.ShapesParamError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except (FileExistsError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}')
    if v < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative integer, got {v}')
    return v


def build_parser():
    parser = argparse.ArgumentParser(description='Generate the synthetic shapes data or check a real data set.')
    sub = parser.add_subparsers(dest='command', metavar='{shapes,check}')
    sub.required = True

    p = sub.add_parser('shapes', help='generate the deterministic synthetic shapes data')
    p.add_argument('--root', default='data/shapes', help='parent folder; tasks go to <root>/{cls,seg,det}')
    p.add_argument('--task', choices=('cls', 'seg', 'det', 'all'), default='all')
    p.add_argument('--image-size', type=_positive_int)
    p.add_argument('--num-train', type=_positive_int)
    p.add_argument('--num-val', type=_positive_int)
    p.add_argument('--seed', type=_positive_int)
    p.add_argument('--classes', help='comma-separated subset of circle,square,triangle,star,hexagon,cross')
    p.add_argument('--min-shapes', type=_positive_int)
    p.add_argument('--max-shapes', type=_positive_int)
    p.add_argument('--workers', type=_positive_int, default=0, help='worker processes (output is identical)')
    p.add_argument('--force', action='store_true', help='regenerate even when up to date')
    p.set_defaults(func=cmd_shapes)

    c = sub.add_parser('check', help="check a real data set's standard layout")
    c.add_argument('dataset', choices=sorted(CHECKS))
    c.add_argument('root')
    c.set_defaults(func=cmd_check)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())

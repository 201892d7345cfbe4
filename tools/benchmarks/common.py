"""What every GPU benchmark in tools/benchmarks/ shares: timing, float64 checks, the HBM floor, logs, tables,
plots, JSON results, a deadline guard and the description of the machine.

Scripts import it as ``from common import ...`` after putting their own folder on ``sys.path`` (the GPU machine
runs with ``PYTHONSAFEPATH=1``, which keeps the script's folder off ``sys.path``). Timing on CUDA is
``triton.testing.do_bench`` (median, warm-up, CUDA events, L2 flushed before each call); on the CPU (the smoke
runs of CI) a wall-clock median of the same shape.
"""
import glob
import json
import math
import os
import os.path as osp
import platform
import statistics
import time
import traceback

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


# ----------------------------------------------------------------------------------------------- environment
def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, '__version__', 'unknown')
    except Exception:  # noqa: BLE001  (an optional package that is missing or broken)
        return None


def git_commit():
    """HEAD of the checkout the script runs from, or None (no git, or not a checkout)."""
    try:
        import subprocess
        return subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def describe_env(extra=('triton', 'fla', 'timm', 'mmengine')):
    """GPU name(s), SM count and memory, torch / triton / python versions, optional peers' versions, commit."""
    env = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
               host_cpus=os.cpu_count(), commit=git_commit())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                   sms=props.multi_processor_count, gpu_mem_gib=round(props.total_memory / 2 ** 30, 1))
    else:
        env.update(device='cpu', gpus=0)
    for name in extra:
        v = _version(name)
        if v is not None:
            env[name] = v
    return env


# ----------------------------------------------------------------------------------------------- log, deadline
class Log:
    """print() that also appends each line to ``path`` (the log survives a killed run)."""

    def __init__(self, path=None, t0=None):
        self.path = path
        self.t0 = time.time() if t0 is None else t0
        if path:
            os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)

    def __call__(self, *parts):
        line = f'[{time.time() - self.t0:6.1f}s] ' + ' '.join(str(p) for p in parts)
        print(line, flush=True)
        if self.path:
            with open(self.path, 'a') as f:
                f.write(line + '\n')


class Deadline:
    """Seconds left for this call; parts that would run past it are skipped and recorded, not started."""

    def __init__(self, seconds, t0=None):
        self.seconds = float(seconds) if seconds else math.inf
        self.t0 = time.time() if t0 is None else t0

    def left(self):
        return self.seconds - (time.time() - self.t0)

    def expired(self, need=0.0):
        """True when fewer than ``need`` seconds are left."""
        return self.left() < need


def start(out, seconds, cpu=False):
    """A run's (log, deadline, device): ``out`` created, ``out/log.txt`` appended, CUDA unless ``cpu`` or absent."""
    os.makedirs(out, exist_ok=True)
    device = torch.device('cuda' if torch.cuda.is_available() and not cpu else 'cpu')
    return Log(osp.join(out, 'log.txt')), Deadline(seconds), device


def guarded(log, name, fn, *args, **kwargs):
    """Run one part; a failure is logged with its traceback and returns None (later parts still run)."""
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001
        log(f'{name} failed:\n' + traceback.format_exc()[-2500:])
        return None


# ----------------------------------------------------------------------------------------------- timing
def synchronize(device=None):
    if torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda'):
        torch.cuda.synchronize()


def _cpu_bench(fn, warmup_ms, rep_ms, grad_to_none=None):
    def call():
        if grad_to_none is not None:
            for t in grad_to_none:
                t.grad = None
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    first = call()
    n_warm = max(1, min(100, int(warmup_ms / max(first, 1e-3))))
    for _ in range(n_warm):
        call()
    times = [call()]
    n_rep = max(3, min(1000, int(rep_ms / max(times[0], 1e-3))))
    times += [call() for _ in range(n_rep - 1)]
    return statistics.median(times)


def bench(fn, warmup=25, rep=100, grad_to_none=None, graph=False, device=None):
    """Median milliseconds of ``fn()`` after ``warmup`` ms of warm-up calls over about ``rep`` ms of calls.

    CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed before each call); ``graph=True`` replays
    ``fn`` captured in a CUDA graph (``do_bench_cudagraph``: what a call costs without host launch overhead).
    ``grad_to_none``: tensors whose ``.grad`` is reset before each call (backward timings)."""
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda')
    if not cuda:
        return _cpu_bench(fn, warmup, rep, grad_to_none)
    from triton.testing import do_bench, do_bench_cudagraph
    if graph:
        return do_bench_cudagraph(fn, rep=rep, grad_to_none=grad_to_none, return_mode='median')
    return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode='median')


def time_calls(fn, n=3, warmup=1, device=None):
    """Milliseconds of each of ``n`` calls (after ``warmup`` calls), each bracketed by CUDA events (CPU: the
    wall clock) and synchronised: for long calls such as training steps and step-by-step references."""
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda')
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(n):
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def host_us(fn, n=300, warmup=None, device=None):
    """Host (CPU) microseconds per call: a host clock around ``n`` calls with no synchronisation between them,
    so the figure is what Python, the dispatcher and the launches cost, not the GPU work (launch-cost studies;
    give it a tiny shape so the GPU never holds the host back). ``warmup`` calls first (default min(20, n))."""
    for _ in range(min(20, n) if warmup is None else warmup):
        fn()
    synchronize(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    synchronize(device)
    return dt / n * 1e6


def peak_mib(fn, device=None):
    """Peak memory above what was allocated before one call of ``fn`` (MiB; None on the CPU)."""
    if not (torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda')):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


# ----------------------------------------------------------------------------------------------- checks, floors
def rel(a, b):
    """Relative error ||a - b|| / ||b|| in float64; inf when ``a`` holds a NaN or an infinity."""
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def tolerance(dtype):
    """Relative-error bound the benchmarks' float64 checks use: 1e-5 for fp32, 1e-2 for fp16 / bf16."""
    return 1e-5 if dtype in (torch.float32, torch.float64) else 1e-2


def copy_bandwidth(nbytes=1 << 30, device='cuda'):
    """Bytes per second (read + written) of a device-to-device copy of ``nbytes``, measured now: the HBM floor of
    a kernel is the bytes it must move divided by this."""
    x = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x), rep=100, device=device)
    del x, y
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3)


def floor_ms(nbytes, bandwidth):
    """Milliseconds to move ``nbytes`` at ``bandwidth`` bytes/s."""
    return nbytes / bandwidth * 1e3


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# ----------------------------------------------------------------------------------------------- outputs
def fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    if isinstance(v, float):
        return f'{v:.{digits}g}' if abs(v) < 1e4 else f'{v:.0f}'
    return str(v)


def md_table(rows, columns):
    """A markdown table: ``columns`` is a list of (header, key) with key a dict key of each row or a callable
    row -> value; floats are printed to 4 significant digits, missing values as '-'."""
    lines = ['| ' + ' | '.join(h for h, _ in columns) + ' |', '|' + ' --- |' * len(columns)]
    for r in rows:
        cells = [(k(r) if callable(k) else r.get(k)) for _, k in columns]
        lines.append('| ' + ' | '.join(fmt(c) for c in cells) + ' |')
    return '\n'.join(lines)


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _plain(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    return obj


def write_json(path, obj):
    """Write ``obj`` as indented JSON (non-finite floats as strings, dtypes as names), atomically."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(_plain(obj), f, indent=1, default=str)
    os.replace(tmp, path)


def bench_rows(run):
    """(rows, env) of one ``ops.py`` run directory: the ``bench`` rows of its ``results.json`` and of its
    ``<op>/results.json`` (an A/B writes one folder per op), skipped cases left out; env: the last file's."""
    paths = sorted(glob.glob(osp.join(run, '*', 'results.json')) + glob.glob(osp.join(run, 'results.json')))
    rows, env = [], {}
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        rows += [r for r in res['bench'] if 'skipped' not in r]
        env = res.get('env', env)
    return rows, env


def write_text(path, text):
    with open(path, 'w') as f:
        f.write(text if text.endswith('\n') else text + '\n')


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed (plots are then skipped)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_panels(path, panels, title=None, ncols=3, logx=True, logy=True):
    """One line plot per panel: ``panels`` is a list of (title, xlabel, ylabel, {label: (xs, ys, style)}) with
    style a matplotlib format string ('' for the default). Returns False (nothing written) without matplotlib."""
    plt = pyplot()
    if plt is None or not panels:
        return False
    ncols = min(ncols, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    for ax, (ptitle, xlabel, ylabel, series) in zip(axes.flat, panels):
        for label, (xs, ys, style) in series.items():
            pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float)) and y == y and y > 0]
            if pts:
                ax.plot(*zip(*pts), style or '-o', label=label, markersize=3)
        if logx:
            ax.set_xscale('log', base=2)
        if logy:
            ax.set_yscale('log')
        ax.set(title=ptitle, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3, which='both')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def scalars(work_dir):
    """The records of the newest ``scalars.json`` (MMEngine's visualiser log) under ``work_dir``, or []."""
    files = sorted(osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs if f == 'scalars.json')
    if not files:
        return []
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------- profiles
def profile(fn, iters=2, row_limit=15, device=None):
    """torch.profiler over ``iters`` calls of ``fn`` (after one warm-up call): the top-``row_limit`` table by
    device time (CPU time without a GPU) and per-event rows (name, count, device ms per iteration, kernel: a GPU
    activity rather than a host op)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as _profile
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == 'cuda')
    fn()
    synchronize(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with _profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    events = prof.key_averages()
    key = 'cuda_time_total' if cuda else 'cpu_time_total'
    table = events.table(sort_by=key, row_limit=row_limit)
    rows = []
    for e in events:
        t = getattr(e, 'device_time_total', None) if cuda else e.cpu_time_total
        if t is None:
            t = getattr(e, 'cuda_time_total', 0)
        # kernel: a GPU activity (kernel, memcpy, memset), not a host op whose time sums its children's kernels
        kernel = (cuda and e.device_type != torch.autograd.DeviceType.CPU
                  and not getattr(e, 'is_user_annotation', False))
        rows.append(dict(name=e.key, count=e.count / iters, ms_per_iter=t / iters / 1e3, kernel=kernel))
    rows.sort(key=lambda r: -r['ms_per_iter'])
    return table, rows


def host_profile(fn, n, device=None, rows=25):
    """cProfile of ``n`` calls of ``fn`` (no synchronisation inside, one after): the top ``rows`` functions by own
    time, as text."""
    import cProfile
    import io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    synchronize(device)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats('tottime').print_stats(rows)
    return buf.getvalue().strip()

"""Building an index: the one pass over a corpus, its checkpoints, and resuming them.

`build_index(lm, sae, windows, out_dir)` streams token windows once through the model (up to
the SAE's hook only) and the SAE encoder, folds each batch into a `PassState`
(explorer.index.pass_state), and hands the finished state to `write_index`
(explorer.index.finalise), which writes the folder.

BOS. Position 0 of a window is skipped (masked out of every statistic and trace) when it holds
the tokenizer's BOS token: its activations are outliers (the same context in every window,
often the corpus maximum), as SAEDashboard also masks special tokens.

Histogram edges are fixed before the first batch is folded in, so that every batch (and every
shard of a split build) bins alike: from `hist_range` when given, else HIST_DECADES decades
below the first batch's largest activation times HIST_HEADROOM, rounded up to a power of ten.

Resume. Every `checkpoint_every` batches the running state goes to `<out_dir>.partial/`. A rerun
with the same inputs (model, hook, SAE, corpus, settings) continues from it; with different
inputs it refuses (IndexMismatchError) rather than mixing two corpora.

One writer. A build holds an exclusive lock (flock) on `.<name>.lock` beside the output folder
from its first check to its last write; a second build of the same folder refuses at once
(IndexBusyError). The OS drops the lock when the process ends, however it ends. Under the
lock, a build first removes what a killed build left (temp folders, the lock file), then
refuses to replace an index of another SAE unless `force=True`, and a folder that is no
index at all even then.

Split builds. Under torchrun (`build_index(..., dist=...)`, explorer.distributed) every rank
folds a contiguous share of whole batches (`shard_batches`) into its own PassState, with the
histogram edges rank 0 fixed (as the one-process build would) and broadcast before any rank
starts. Each rank checkpoints to `<out_dir>.partial/rank-K-of-N/`, so a rerun with the same
number of ranks resumes every rank where it stopped, and a rank whose shard was done does no
work. Then every rank sends its state to rank 0 (safetensors bytes over the process group),
which folds them in rank order with explorer.index.merge and writes the index: the same files,
byte for byte, as one process writes; only the manifest's `created` and `distributed` (world
size, backend, rank 0's wait for the slowest shard, the gather-and-merge time, each rank's peak
RSS up to the merge) differ. Rank 0 alone holds the
output lock and writes the output folder; an error a user can cause on rank 0 stops every rank
with its message (explorer.distributed.from_rank0).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from explorer import distributed
from explorer.distributed import Dist
from explorer.files import FILE_MODE, make_dirs, remove_leftovers, replacing
from explorer.hooks import run_to_hook
from explorer.index.finalise import write_index
from explorer.index.format import (
    FORMAT_VERSION,
    HIST_DECADES,
    MANIFEST_FILE,
    N_BINS,
    N_QUANTILES,
    SAMPLES_PER_BIN,
    IndexBusyError,
    IndexFormatError,
    IndexManifest,
    IndexMismatchError,
)
from explorer.index.merge import merge_pair
from explorer.index.pass_state import LOW32, PassState
from explorer.tl_processing import sae_space

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_EVERY = 50
HIST_HEADROOM = 4.0  # hi >= 4x the first batch's max, so later, larger maxima still get bins


def _corpus_hash(tokens: np.ndarray) -> str:
    arr = np.ascontiguousarray(tokens, dtype="<i4")
    digest = hashlib.sha256(f"int32{list(arr.shape)}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _weights_fingerprint(sae) -> str:
    """sha256 of the SAE's config and parameters, for SAEs that have no file fingerprint."""
    digest = hashlib.sha256(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, p in sorted(sae.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return "weights-" + digest.hexdigest()


def _hist_edges(hi: float) -> np.ndarray:
    """N_BINS + 1 log-spaced float32 edges from hi * 10^-HIST_DECADES to hi."""
    exps = np.linspace(math.log10(hi) - HIST_DECADES, math.log10(hi), N_BINS + 1)
    return (10.0 ** exps).astype(np.float32)


def _calibrated_hi(max_act: float) -> float:
    if not math.isfinite(max_act) or max_act <= 0:
        return 1.0
    return float(10.0 ** math.ceil(math.log10(max_act * HIST_HEADROOM)))


def _identity(lm, sae, windows, fingerprint: str, settings: dict) -> dict:
    """What a checkpoint must match to be resumed; also the start of the manifest."""
    return {
        "format_version": FORMAT_VERSION,
        "model_name": lm.name,
        "hook_name": sae.cfg.hook_name,
        "sae_fingerprint": fingerprint,
        "corpus_hash": _corpus_hash(windows.tokens),
        "n_windows": int(windows.tokens.shape[0]),
        "window_len": int(windows.tokens.shape[1]),
        "d_sae": int(sae.cfg.d_sae),
        "settings": settings,
    }


def _save_checkpoint(partial: Path, run: PassState, identity: dict) -> None:
    from safetensors.torch import save_file

    meta = {"identity": json.dumps(identity, sort_keys=True), "windows_done": str(run.windows_done),
            "n_tokens": str(run.n_tokens)}
    with replacing(partial / STATE_FILE) as tmp:
        save_file(run.state_dict(), str(tmp), metadata=meta)
    log.info("checkpoint after %d windows in %s", run.windows_done, partial)


def _load_checkpoint(partial: Path, run: PassState, identity: dict) -> bool:
    from safetensors import safe_open

    file = partial / STATE_FILE
    if not file.is_file():
        return False
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
        saved = json.loads(meta["identity"])
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise IndexFormatError(f"The partial build in {partial} cannot be read ({err}). "
                               f"Fix: delete {partial} and build again") from None
    if saved != identity:
        differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise IndexMismatchError(
            f"A partial build in {partial} was made from other inputs (they differ in: {', '.join(differ)}), "
            f"so it cannot be resumed. Fix: rerun with the original model, SAE, windows and settings, "
            f"or delete {partial} to start over")
    run.load_state_dict(state)
    run.windows_done, run.n_tokens = int(meta["windows_done"]), int(meta["n_tokens"])
    log.info("resuming %s after %d windows", partial, run.windows_done)
    return True


@contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold the lock on index folder `out` for the block; IndexBusyError if another build has it."""
    lock = out.with_name(f".{out.name}.lock")
    make_dirs(out.parent)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IndexBusyError(f"Another `explorer index` is writing {out} (pid {holder}). "
                                 "Fix: wait for it to finish, or choose another --out") from None
        # A build that ended between our open and our flock removed the file first; a lock on
        # that removed file keeps no one out, so open the path anew.
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)  # before letting go, see above
        os.close(fd)


def _check_target(out: Path, fingerprint: str, force: bool) -> None:
    """Refuse to replace what is not an index, or (unless `force`) an index of another SAE."""
    if not out.exists():
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file()):
        raise ValueError(f"{out} exists and is not a feature index; a rebuild replaces the whole folder. "
                         "Fix: pass a new folder, or an existing index folder to rebuild it")
    if force or not (out / MANIFEST_FILE).is_file():
        return
    try:
        old = IndexManifest.from_dict(json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))).sae_fingerprint
    except ValueError as err:
        raise IndexFormatError(f"{out} holds an index whose manifest cannot be read ({err}), so it may be of "
                               "another SAE. Fix: choose another --out, or pass --force to replace it") from None
    if old != fingerprint:
        raise IndexMismatchError(f"{out} holds the index of another SAE ({old[:16]}, this one is "
                                 f"{fingerprint[:16]}). Fix: choose another --out, or pass --force to replace it")


def _check_inputs(tokens: np.ndarray, sae, top_n: int, batch_size: int, checkpoint_every: int,
                  hist_range: tuple[float, float] | None) -> None:
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"windows.tokens must be a non-empty (n, window) array, got shape {list(tokens.shape)}")
    if top_n < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"top_n={top_n}, batch_size={batch_size}, checkpoint_every={checkpoint_every}: "
                         "all must be >= 1")
    n_windows, L = tokens.shape
    if n_windows * L >= LOW32:
        raise ValueError(f"{n_windows} windows of {L} tokens exceed the 2^32 - 1 token ids of one index; "
                         "split the corpus into several indexes")
    if hist_range is not None and not 0 < hist_range[0] < hist_range[1]:
        raise ValueError(f"hist_range={hist_range}: use (lo, hi) with 0 < lo < hi")
    if not sae.cfg.hook_name:
        raise ValueError("the SAE has no hook_name; set it (e.g. blocks.15.hook_resid_post) before indexing")


def _encode_batch(lm, sae, space, tokens: np.ndarray, lo: int, hi: int, bos: int | None):
    """(f, skip): the SAE activations (batch, seq, d_sae) float32 of windows lo..hi, position 0
    zeroed where it holds BOS, and which windows those are (batch,) bool."""
    ids = torch.from_numpy(np.ascontiguousarray(tokens[lo:hi], dtype=np.int64)).to(lm.device)
    with lm.lock:
        x = space.to_sae(run_to_hook(lm.model, sae.cfg.hook_name, ids))
    f = sae.encode(x.to(sae.device)).float()  # (batch, seq, d_sae)
    skip = (ids[:, 0] == bos) if bos is not None else torch.zeros(hi - lo, dtype=torch.bool)
    skip = skip.to(f.device)
    f[:, 0][skip] = 0.0
    return f, skip


def _run_pass(lm, sae, tokens: np.ndarray, run: PassState, bos: int | None, batch_size: int,
              checkpoint_every: int, checkpoint: Callable[[], None], on_batch: Callable[[int], None] | None,
              progress: bool, batches: range | None = None, ready: dict | None = None,
              sources: np.ndarray | None = None) -> None:
    """Fold the windows from `run.windows_done` on into `run`, batch by batch, checkpointing.
    `batches` (default: all) are the batch numbers of this process's shard; `ready` maps batch
    numbers to their `_encode_batch` result where that was already computed; `sources` (n, seq)
    are the corpus source ids of every token, when the pass tracks them."""
    n_windows, L = tokens.shape
    batches = range(math.ceil(n_windows / batch_size)) if batches is None else batches
    first_window = min(batches.start * batch_size, n_windows)
    end_window = min(batches.stop * batch_size, n_windows)
    bar = tqdm(total=int((end_window - first_window) * L), initial=(run.windows_done - first_window) * L,
               unit="tok", unit_scale=True, desc="indexing", disable=not progress)
    started, done_here = time.perf_counter(), 0
    with lm.lock:
        space = sae_space(lm.model, sae.cfg)  # the SAE's input space (TransformerLens processing)
    for number in range(max(batches.start, run.windows_done // batch_size), batches.stop):
        lo, hi = number * batch_size, min((number + 1) * batch_size, n_windows)
        f, skip = (ready or {}).pop(number, None) or _encode_batch(lm, sae, space, tokens, lo, hi, bos)
        if run.edges is None:
            run.edges = torch.from_numpy(_hist_edges(_calibrated_hi(float(f.max())))).to(f.device)
        source = None if sources is None else torch.from_numpy(sources[lo:hi].astype(np.int64)).to(f.device)
        run.update(f, lo, source)
        run.windows_done = hi
        run.n_tokens += (hi - lo) * L - int(skip.sum())
        done_here += (hi - lo) * L
        bar.update((hi - lo) * L)
        bar.set_postfix_str(f"{done_here / max(time.perf_counter() - started, 1e-9):,.0f} tok/s", refresh=False)
        last = number == batches.stop - 1
        if ((number + 1) % checkpoint_every == 0 and not last) or (last and len(batches) > checkpoint_every):
            checkpoint()
        if on_batch is not None:
            on_batch(number)
    bar.close()


@torch.inference_mode()
def build_index(
    lm,
    sae,
    windows,
    out_dir: str | Path,
    top_n: int = 20,
    batch_size: int = 16,
    sae_path_fingerprint: str | None = None,
    progress: bool = True,
    *,
    hist_range: tuple[float, float] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    on_batch: Callable[[int], None] | None = None,
    force: bool = False,
    dist: Dist | None = None,
) -> Path:
    """Index `windows` (explorer.corpus.Windows) for every feature of `sae` on `lm`; returns out_dir.

    `sae_path_fingerprint` identifies the SAE in the manifest (pass sae_fingerprint(path));
    without it a hash of the SAE's weights is used. `hist_range` = (lo, hi) fixes the histogram
    edges (the same for every shard of a split build); by default they come from the first batch.
    `on_batch(batch_number)` runs after each batch (and its checkpoint): a progress hook.
    An index of another SAE already in `out_dir` is replaced only with `force=True`.
    With `dist` (explorer.distributed, under torchrun) this process builds its shard only, and
    rank 0 merges the shards and writes the index (see "Split builds" above).
    """
    tokens = np.asarray(windows.tokens)
    _check_inputs(tokens, sae, top_n, batch_size, checkpoint_every, hist_range)
    out = Path(out_dir).expanduser()
    if out.name in ("", ".."):  # its lock, partial and temp folders are named after it
        raise ValueError(f"{out_dir!r} names no folder of its own. Fix: pass one, e.g. {out / 'index'}")
    fingerprint = sae_path_fingerprint or _weights_fingerprint(sae)
    L, d = tokens.shape[1], sae.cfg.d_sae
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    run = PassState(d, L, top_n, sae.device, max_tokens=tokens.size)
    settings = {"top_n": top_n, "batch_size": batch_size, "n_bins": N_BINS, "hist_decades": HIST_DECADES,
                "hist_range": list(hist_range) if hist_range else None, "n_quantiles": N_QUANTILES,
                "samples_per_bin": SAMPLES_PER_BIN, "skip_bos_token_id": bos,
                "cooccurrence": run.cooc.mode}
    sources = getattr(windows, "source", None)  # per-token source ids (explorer.corpus), if the corpus has them
    if sources is not None:
        run.track_sources(len(windows.source_names))
        settings["source_names"] = list(windows.source_names)
    identity = _identity(lm, sae, windows, fingerprint, settings)
    if dist is not None:
        job = _SplitJob(dist, out, partial, identity, fingerprint, force, batch_size, hist_range, bos)
        return _build_split(job, lm, sae, windows, run, checkpoint_every, on_batch, progress)
    with _output_lock(out):
        remove_leftovers(out)  # temp folders of a build that was killed while writing
        remove_leftovers(partial / STATE_FILE)
        _check_target(out, fingerprint, force)
        _load_checkpoint(partial, run, identity)
        if run.edges is None and hist_range is not None:
            run.edges = torch.from_numpy(_range_edges(hist_range)).to(sae.device)

        _run_pass(lm, sae, tokens, run, bos, batch_size, checkpoint_every,
                  lambda: _save_checkpoint(partial, run, identity), on_batch, progress, sources=sources)

        write_index(out, run, lm, sae, windows, _manifest(identity, run))
        shutil.rmtree(partial, ignore_errors=True)
    return out


def _range_edges(hist_range: tuple[float, float]) -> np.ndarray:
    return np.geomspace(hist_range[0], hist_range[1], N_BINS + 1).astype(np.float32)


def _manifest(identity: dict, run: PassState, distributed: dict | None = None) -> dict:
    manifest = dict(identity)
    manifest["n_tokens"] = run.n_tokens
    manifest["settings"] = {**identity["settings"], "hist_edges": [float(e) for e in run.edges.cpu()],
                            "cooccurrence": run.cooc.description}  # approximate past a bound
    manifest["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    if distributed is not None:
        manifest["distributed"] = distributed
    return manifest


# --------------------------------------------------------------------------- split builds (torchrun)


@dataclass(frozen=True)
class _SplitJob:
    """What every rank of one split build shares."""

    dist: Dist
    out: Path
    partial: Path
    identity: dict
    fingerprint: str
    force: bool
    batch_size: int
    hist_range: tuple[float, float] | None
    bos: int | None


def shard_batches(n_batches: int, rank: int, world_size: int) -> range:
    """The batch numbers of `rank`: a contiguous, near-equal share of whole batches. Batches are
    cut before sharding, so a window's batch never depends on the number of ranks."""
    return range(rank * n_batches // world_size, (rank + 1) * n_batches // world_size)


def _agreed_edges(job: _SplitJob, lm, sae, tokens: np.ndarray, run: PassState, ready: dict) -> list[float]:
    """Rank 0's histogram edges, the one-process build's: from its checkpoint, hist_range, or
    global batch 0, whose activations stay in `ready` for rank 0's pass."""
    if run.edges is not None:
        return [float(e) for e in run.edges.cpu()]
    if job.hist_range is not None:
        return [float(e) for e in _range_edges(job.hist_range)]
    with lm.lock:
        space = sae_space(lm.model, sae.cfg)
    ready[0] = _encode_batch(lm, sae, space, tokens, 0, min(job.batch_size, len(tokens)), job.bos)
    f = ready[0][0]
    return [float(e) for e in _hist_edges(_calibrated_hi(float(f.max())))]


def _build_split(job: _SplitJob, lm, sae, windows, run: PassState, checkpoint_every: int,
                 on_batch: Callable[[int], None] | None, progress: bool) -> Path:
    """This rank's share of a split build; rank 0 also merges every shard and writes the index."""
    dist, tokens = job.dist, np.asarray(windows.tokens)
    n_windows = len(tokens)
    batches = shard_batches(math.ceil(n_windows / job.batch_size), dist.rank, dist.world_size)
    first = min(batches.start * job.batch_size, n_windows)
    mine = job.partial / f"rank-{dist.rank}-of-{dist.world_size}"
    identity = {**job.identity, "shard_windows": [first, min(batches.stop * job.batch_size, n_windows)]}
    ready: dict = {}  # batch 0's activations when rank 0 computed them for the edges

    def resume() -> bool:
        remove_leftovers(mine / STATE_FILE)
        return _load_checkpoint(mine, run, identity)

    def prepare() -> list[float]:  # rank 0, holding the output lock, before any rank starts
        remove_leftovers(job.out)
        _check_target(job.out, job.fingerprint, job.force)
        resume()
        return _agreed_edges(job, lm, sae, tokens, run, ready)

    with _output_lock(job.out) if dist.rank == 0 else nullcontext():
        agreed = torch.tensor(distributed.from_rank0(dist, prepare), dtype=torch.float32, device=sae.device)
        if dist.rank != 0:
            resume()
        if run.edges is not None and not torch.equal(run.edges, agreed):
            raise IndexMismatchError(f"The partial build in {mine} used other histogram edges than rank 0. "
                                     f"Fix: delete {job.partial} and build again")
        run.edges = agreed
        run.windows_done = max(run.windows_done, first)
        _run_pass(lm, sae, tokens, run, job.bos, job.batch_size, checkpoint_every,
                  lambda: _save_checkpoint(mine, run, identity), on_batch, progress and dist.rank == 0, batches, ready,
                  sources=getattr(windows, "source", None))
        _save_checkpoint(mine, run, identity)  # the finished shard: a rerun skips it
        state = run.state_dict()
        waited = time.perf_counter()
        distributed.barrier(dist)  # every shard done: what follows times the gather and merge alone
        waited = time.perf_counter() - waited
        if dist.rank != 0:
            meta = {"n_tokens": run.n_tokens, "peak_rss_bytes": distributed.peak_rss_bytes()}
            distributed.send_bytes(dist, json.dumps(meta).encode())
            distributed.send_bytes(dist, _state_bytes(state))
            distributed.from_rank0(dist, lambda: None)  # wait for the index, or rank 0's error
        else:
            distributed.from_rank0(dist, lambda: _merge_and_write(job, lm, sae, windows, run, state, waited))
    shutil.rmtree(mine, ignore_errors=True)
    distributed.barrier(dist)  # every rank's folder is gone before rank 0 removes theirs
    if dist.rank == 0:
        shutil.rmtree(job.partial, ignore_errors=True)
    return job.out


def _state_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state)


def _merge_and_write(job: _SplitJob, lm, sae, windows, run: PassState, state: dict, waited: float) -> None:
    """Rank 0: take every other rank's state in rank order, fold each into its own, write the index."""
    from safetensors.torch import load

    dist = job.dist
    started = time.perf_counter()
    n_tokens, rss = run.n_tokens, [distributed.peak_rss_bytes()]
    for rank in range(1, dist.world_size):
        meta = json.loads(distributed.recv_bytes(dist, rank))
        state = merge_pair(state, load(distributed.recv_bytes(dist, rank)), run.window_len)
        n_tokens += meta["n_tokens"]
        rss.append(meta["peak_rss_bytes"])
    merged = PassState(run.d_sae, run.window_len, run.top_n, run.device)
    if run.source_limbs is not None:
        merged.track_sources(run.n_sources)
    merged.load_state_dict(state)
    merged.n_tokens, merged.windows_done = n_tokens, len(windows.tokens)
    seconds = time.perf_counter() - started
    rss[0] = distributed.peak_rss_bytes()
    log.info("merged the states of %d ranks in %.2f s", dist.world_size, seconds)
    how = {"world_size": dist.world_size, "backend": dist.backend, "wait_seconds": round(waited, 3),
           "gather_merge_seconds": round(seconds, 3), "peak_rss_bytes": rss}
    write_index(job.out, merged, lm, sae, windows, _manifest(job.identity, merged, how))

"""Run an ingest's file jobs (read, decode) in this process or in worker
processes, with a progress bar; results arrive while the workers still run."""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm import tqdm

from common.ingest.config import IngestConfig
from common.ingest.packs import SeriesBuffer, folder_chunks
from common.ingest.worker import FileResult, WorkerSetup, init_worker, process_chunk


def run_jobs(
    jobs: list[tuple[str, bool]],
    setup: WorkerSetup,
    config: IngestConfig,
    desc: str,
    progress: bool,
) -> Iterator[FileResult]:
    """Run file jobs in this process or in worker processes, with a progress bar."""
    bar = tqdm(
        total=len(jobs),
        desc=desc,
        unit="file",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        workers = min(config.workers, len(jobs))
        chunks = folder_chunks(jobs, workers)
        if workers <= 1:
            sink = SeriesBuffer(setup.packs_dir, config.image_size)
            try:
                for chunk in chunks:
                    results = process_chunk(chunk, setup, sink)
                    yield from results
                    bar.update(len(results))
            finally:
                sink.close()
            return
        pool = ProcessPoolExecutor(
            workers,
            mp_context=_context(),
            initializer=init_worker,
            initargs=(setup,),
        )
        try:
            yield from _pool_results(pool, chunks, setup, config, bar)
        finally:
            # Every result is in and every pack flushed: the workers exit
            # while the run goes on (waiting for them is 10-20 ms of
            # serial time).
            pool.shutdown(wait=False, cancel_futures=True)
    finally:
        bar.close()


def _pool_results(
    pool: ProcessPoolExecutor,
    chunks: list,
    setup: WorkerSetup,
    config: IngestConfig,
    bar,
) -> Iterator[FileResult]:
    """Results of `chunks` run by the pool's workers.

    Starting workers takes time (tens of ms for each new pool, a second or
    more for a process's first, which starts the forkserver), and most of it
    is spent inside `submit`. So a thread submits the chunks from the front
    of the queue while this process takes chunks from its back, until a
    worker delivers its first results; then the cores are the workers'.
    """
    queue = deque(chunks)
    lock = threading.Lock()
    futures: list = []
    failed: list[BaseException] = []

    def submit_all() -> None:
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    chunk = queue.popleft()
                futures.append(pool.submit(process_chunk, chunk))
        except BaseException as err:  # re-raised below, in this thread
            failed.append(err)

    submitter = threading.Thread(target=submit_all, daemon=True)
    submitter.start()
    sink = SeriesBuffer(setup.packs_dir, config.image_size)
    try:
        while not any(future.done() for future in list(futures)):
            with lock:
                if len(queue) <= config.workers:
                    break  # the last chunks are the workers'
                chunk = queue.pop()
            results = process_chunk(chunk, setup, sink)
            yield from results
            bar.update(len(results))
    finally:
        sink.close()
        with lock:
            if sys.exc_info()[0] is not None:
                queue.clear()  # stop submitting
        submitter.join()
    if failed:
        raise failed[0]
    for future in as_completed(futures):
        results = future.result()
        yield from results
        bar.update(len(results))


def _context():
    """forkserver: safe when the parent has threads (TensorFlow, Flower), and
    cheaper than spawn because the server imports the worker module once, and
    the parent's main module once: each new worker would import it again (a
    forkserver or spawn child does, unless its server already has), which
    cost 50-500 ms per pool under the benchmark's script."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["__main__", "common.ingest.worker"])
        return ctx
    return multiprocessing.get_context("spawn")

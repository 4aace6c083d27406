"""Load test of the Gradio app: N requests, C at a time, through gradio_client, against 127.0.0.1 only.

    python benchmarks/space_load.py [MODEL] [--requests 200] [--concurrency 50]

MODEL defaults to the offline demo's model (made on first use).  Prints the failure count and latency
percentiles; the last line is a JSON object.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spaces"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()

    from app import default_model  # spaces/app.py
    from gradio_client import Client, handle_file

    from tl_hub.space import build_app, example_images, launch

    model = args.model or default_model()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    demo = build_app(model, examples=example_images())
    launch(demo, port=port, block=False, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    images = example_images()
    Client(url, verbose=False).predict(handle_file(images[0]), api_name="/predict")  # warm-up

    def one(i):
        client = Client(url, verbose=False)
        start = time.perf_counter()
        try:
            client.predict(handle_file(images[i % len(images)]), api_name="/predict")
            return time.perf_counter() - start, None
        except Exception as e:  # counted, not raised
            return time.perf_counter() - start, repr(e)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    demo.close()
    latencies = sorted(r[0] for r in results)
    failures = [r[1] for r in results if r[1]]
    q = statistics.quantiles(latencies, n=100)
    out = {"requests": args.requests, "concurrency": args.concurrency, "failures": len(failures),
           "p50_s": q[49], "p95_s": q[94], "max_s": latencies[-1], "wall_s": wall,
           "requests_per_s": args.requests / wall}
    print(f"{args.requests} requests, {args.concurrency} concurrent: {len(failures)} failed; latency p50 "
          f"{out['p50_s']:.2f} s, p95 {out['p95_s']:.2f} s, max {out['max_s']:.2f} s; {out['requests_per_s']:.1f} "
          f"requests/s")
    if failures:
        print("first failure:", failures[0])
    print(json.dumps(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

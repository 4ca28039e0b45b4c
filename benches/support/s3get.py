#!/usr/bin/env python3
"""The anchor reader of benches/s3_multiframe.sh: plain S3 GETs signed with
SigV4 (standard library only; curl 7.88's --aws-sigv4 signs a payload hash
that s3s-fs and Garage reject), credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_REGION.

    s3get.py largest ENDPOINT BUCKET PREFIX   print the largest key under PREFIX
    s3get.py get ENDPOINT BUCKET KEY          read the object, print "BYTES SECONDS"
    s3get.py puts ENDPOINT BUCKET PREFIX N BYTES STREAMS
                                              N new objects of BYTES each, over STREAMS
                                              connections at once, each PUT waiting for
                                              its answer: print "PUTS/S" (the store's own
                                              rate for one acknowledged object at a time)
"""

import datetime
import hashlib
import hmac
import http.client
import os
import re
import sys
import time
import urllib.parse


def signed_get(endpoint, path, query):
    return signed("GET", endpoint, path, query, b"", None)


def signed(method, endpoint, path, query, body, conn):
    u = urllib.parse.urlsplit(endpoint)
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(body).hexdigest()
    qs = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in sorted(query.items())
    )
    headers = {"host": u.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, urllib.parse.quote(path, safe="/-_.~"), qs]
        + [f"{h}:{headers[h]}" for h in sorted(headers)]
        + ["", signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    conn = conn or http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.request(method, path + ("?" + qs if qs else ""), body=body or None, headers=headers)
    r = conn.getresponse()
    if r.status != 200:
        sys.exit(f"s3get.py: {method} {path}: {r.status} {r.read()[:300]!r}")
    return r


def puts(endpoint, bucket, prefix, n, size, streams):
    """n PUTs of `size` random bytes over `streams` keep-alive connections."""
    import threading

    u = urllib.parse.urlsplit(endpoint)
    bodies = [os.urandom(size) for _ in range(min(n, 8))]
    counter = iter(range(n))
    lock = threading.Lock()
    errors = []

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        while not errors:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = bodies[i % len(bodies)][:-8] + i.to_bytes(8, "big")
            try:
                signed("PUT", endpoint, f"/{bucket}/{prefix}{i:06d}", {}, body, conn).read()
            except BaseException as e:  # SystemExit from signed() included: a thread cannot exit the process
                errors.append(e)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"s3get.py: PUT failed: {errors[0]}")
    print(f"{n / (time.monotonic() - t0):.1f}")


def main():
    cmd, endpoint, bucket, arg = sys.argv[1:5]
    if cmd == "puts":
        n, size, streams = (int(x) for x in sys.argv[5:8])
        puts(endpoint, bucket, arg, n, size, streams)
    elif cmd == "largest":
        body = signed_get(endpoint, f"/{bucket}", {"list-type": "2", "prefix": arg}).read().decode()
        sizes = [(int(s), k) for k, s in re.findall(r"<Key>([^<]+)</Key>.*?<Size>(\d+)</Size>", body, re.S)]
        if not sizes:
            sys.exit("s3get.py: nothing under the prefix")
        print(max(sizes)[1])
    elif cmd == "get":
        t0 = time.monotonic()
        r = signed_get(endpoint, f"/{bucket}/{arg}", {})
        n = 0
        while chunk := r.read(1 << 20):
            n += len(chunk)
        print(n, f"{time.monotonic() - t0:.3f}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

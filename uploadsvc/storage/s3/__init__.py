"""Upload bytes in an S3 bucket (AWS S3, MinIO, Ceph RGW): no host keeps any of them.

Layout under the prefix ``P`` for upload ``I`` (ids are alphanumeric, so the ``.``
below never makes one upload's names another's):

    P/I                                  the whole upload, once finished
    multipart upload of P/I              part n holds bytes [(n-1)*S, n*S)
    P/I.incomplete/p<S>/<start>          a segment: bytes [start, start+size) that
                                         don't fill a part yet (start: 20 digits)

``S`` is the part size the upload was created with (``UPLOADSVC_S3_PART_SIZE``, in
its segments' names), so changing the setting never confuses uploads in flight.

The segments are the truth about what arrived. The largest segment start that is a
multiple of ``S`` is the *base*: every part before it is in the multipart upload (an
empty segment marks it when its part is written). From the base, segments follow one
another, each starting where the last ended; where that chain ends is the upload's
size, so ``Upload-Offset`` counts exactly the bytes durably in the bucket. A PATCH
streams its body into a buffer of at most one part: when the part fills, it is
uploaded with the segments before it, and a marker segment moves the base on; when the
body ends (or breaks off), what is left becomes one more segment, which the next PATCH,
on any host, continues.

Checksummed PATCHes may be discarded after the fact (``truncate(start)``), even past
parts already uploaded: parts can't be read back before the multipart upload
completes, so the segments of the part a PATCH started in are kept until the next PATCH
begins, when everything before its offset is known good. ``truncate`` deletes what the
PATCH added and the chain again ends at ``start``; parts past it are overwritten later,
and completion lists only the parts the chain accounts for.

``finish`` completes the multipart upload into ``P/I`` (or copies a lone segment) and
deletes the segments; ``open`` does it too if it hasn't happened (a crash between the
last PATCH and ``finish``). Downloads are ranged GETs of ``P/I``; a final upload
(concatenation) has no bytes of its own and is read through its partials' objects.

The package, bottom up: ``layout`` (these names, segments and chains, pure: table
tests need no S3), ``bucket`` (each S3 call once, botocore's errors made ours in one
place), ``writer`` (a PATCH's body into parts and segments) and ``reader`` (a finished
object as a seekable file) over the bucket, and ``store`` (``S3Store``, the
``UploadStore`` that puts them together).
"""

from .layout import MAX_SEGMENTS
from .store import MIN_PART, POOL_CONNECTIONS, S3Store

__all__ = ["MAX_SEGMENTS", "MIN_PART", "POOL_CONNECTIONS", "S3Store"]

"""What the live tests (tests/live), the torture campaigns (torture/) and the benchmark
(bench/) share to run real servers: not part of the uploadsvc package, and free of pytest
so `make torture` and `make bench` can import it as the test suite does."""

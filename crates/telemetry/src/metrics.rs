//! Prometheus metrics: request rates and latencies per route, and the gauges of the stores and
//! queues (database pool, outbox lag, MLLP queue depth, export progress), read at scrape time.

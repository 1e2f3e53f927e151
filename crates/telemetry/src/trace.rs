//! Tracing: the process's subscriber (logs + OpenTelemetry), W3C trace context in and out.

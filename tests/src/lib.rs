//! Integration tests for Sluice; the broker-level suites arrive with issue #4.

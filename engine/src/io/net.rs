//! Sockets: SO_REUSEPORT listeners, readiness-driven sendfile for zero-copy fetch.

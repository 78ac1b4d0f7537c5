//! Files on io_uring: positioned writes and reads, fsync, fallocate.

//! The Kafka-stream endpoint of `serving` (planned; nothing here works yet).
//!
//! It will consume the input topics, predict each message (raw bytes in) with a
//! [`serving_core::ModelEndpoint`], and produce to the output topic. A new endpoint starts at
//! the latest offset; rolling a new model onto a running stream resumes exactly where the old
//! one stopped; replicas are bounded by the input partitions.
